//! The command-line commands. Each one parses its arguments here and calls into the library;
//! this is the only place (with `main.rs`) where `anyhow` is used.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Keeps Adobe Marketo Engage and a CRM in step, both ways, unattended.
#[derive(Debug, Parser)]
#[command(name = "marketo-sync", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Colour text output: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = crate::app::ops::ColorChoice::Auto)]
    pub color: crate::app::ops::ColorChoice,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks settings, mapping files, both sides' schemas and the state store in one pass, and
    /// prints every problem (errors first) with file, line, column and a caret. Exits 1 when
    /// there is an error (or a warning, with --deny-warnings).
    Validate {
        /// The config directory (default.toml, <env>.toml, mappings/).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// A directory of ObjectSchema JSON snapshots to check the mappings against (default:
        /// the live Marketo and CRM schemas, read with the configured credentials).
        #[arg(long)]
        schemas: Option<PathBuf>,
        /// The environment name, selecting <env>.toml.
        #[arg(long, env = "MKSYNC_ENV")]
        env: Option<String>,
        /// Check settings and mappings without reading any schema or opening the state store.
        #[arg(long, conflicts_with = "schemas")]
        offline: bool,
        /// Print the problems as a JSON array (severity, file, line, column, key, message, help).
        #[arg(long)]
        json: bool,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Mapping-file tools.
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Runs the Marketo simulator until Ctrl-C.
    Simulate(SimulateArgs),
    /// Runs the HubSpot simulator until Ctrl-C.
    SimulateHubspot(SimulateHubspotArgs),
    /// Loads both sides for the first time, resumably, within the daily bulk budget.
    Bootstrap(BootstrapArgs),
    /// CRM adapter maintenance.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
    /// Runs the sync: `--once` runs one cycle and prints its summary (`--dry-run`: the planned
    /// writes, each field before and after, without writing anything).
    ///
    /// Refused while sync is paused (unless --force) or while another process (a daemon) holds
    /// the sync lease; the run holds the lease itself, so a daemon starting meanwhile waits.
    Sync {
        /// Run one cycle and exit.
        #[arg(long)]
        once: bool,
        /// The config directory.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// The environment layer (`config/<env>.toml`).
        #[arg(long, env = "MKSYNC_ENV")]
        env: Option<String>,
        /// Plan without writing anything to Marketo, the CRM or the state store; print the
        /// planned writes with each field's value before and after.
        #[arg(long)]
        dry_run: bool,
        /// Run even while sync is paused (never while another process holds the lease).
        #[arg(long)]
        force: bool,
        /// Print the summary (and the plan) as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Sync one CRM record to Marketo now instead of a cycle: `OBJECT:ID`, where OBJECT is
        /// a `sync.objects` name or its CRM object (e.g. `leads:42` or `contacts:42`). Exits 0
        /// when synced or unchanged, 4 when Marketo refused it (an error-ledger entry), 1 for an
        /// unknown object or a record not found.
        #[arg(long, value_name = "OBJECT:ID", conflicts_with_all = ["once", "dry_run"])]
        record: Option<String>,
    },
    /// Runs the sync daemon: a cycle, then the interval, until SIGTERM or SIGINT.
    Run(ConfigArgs),
    /// Runs everything embedded (Marketo simulator, SQLite demo CRM, SQLite state, status page)
    /// and edits both sides between cycles so that records visibly flow both ways.
    Demo(DemoArgs),
    /// Asks a running daemon's /healthz (or /readyz with --ready); exits 0 when it answers 2xx,
    /// 1 otherwise. For container health checks: no curl needed.
    Health(HealthArgs),
    /// Prints the lease, pause state, recent cycles, today's quota and open errors.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lists, retries or discards per-record sync errors.
    Errors {
        #[command(subcommand)]
        command: ErrorsCommand,
    },
    /// Lists conflicts: fields changed on both sides, both values, the winner and the policy.
    Conflicts {
        #[command(subcommand)]
        command: ConflictsCommand,
    },
    /// Pauses all sync work (the running daemon stops starting cycles) until `resume`.
    Pause {
        #[command(flatten)]
        config: ConfigArgs,
        /// Why, shown by `status` and the status page.
        #[arg(long)]
        reason: Option<String>,
        /// End the pause by itself at this time (RFC 3339, e.g. 2026-01-31T18:00:00Z) or after
        /// this long (2h, 30m).
        #[arg(long, value_parser = until_arg)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Ends a pause: an operator's, or the quota pause the daemon records when Marketo's daily
    /// quota runs out.
    Resume(ConfigArgs),
    /// Runs seeded random schedules of edits, faults and kills against the simulator and a
    /// demo CRM (SQLite or PostgreSQL), and checks that both sides converge after each.
    Converge {
        /// How many schedules (seeds) to run.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Steps per schedule.
        #[arg(long, default_value_t = 40)]
        steps: usize,
        /// The config directory whose mappings are used (leads.toml, and companies, opportunities,
        /// roles, salespersons and cars .toml unless --leads-only).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Sync and edit leads only, with the lead steps of the schedules before the other
        /// objects were added (to replay a seed found then).
        #[arg(long)]
        leads_only: bool,
        /// Play the full schedule without activities, as drawn before they were added (to
        /// replay a seed found then).
        #[arg(long, conflicts_with = "leads_only")]
        no_activities: bool,
        /// Play the full schedule plus programs, program members and static lists (Marketo
        /// program statuses, list adds and removes and new programs; CRM campaign member
        /// statuses and list membership rows).
        #[arg(long, conflicts_with_all = ["leads_only", "no_activities"])]
        marketing: bool,
        /// Inject no faults (to tell a fault-related failure from another).
        #[arg(long)]
        no_faults: bool,
        /// Kill no cycles.
        #[arg(long)]
        no_kills: bool,
        /// Where the engine runs: `process` runs every cycle as a child `marketo-sync sync
        /// --once` and kills it with SIGKILL; `in-process` is faster and moves the engine's clock.
        #[arg(long, value_enum, default_value_t = ConvergeEngine::InProcess)]
        engine: ConvergeEngine,
        /// The demo CRM's database: `sqlite` (a file; the fault is a held write lock) or
        /// `postgres` (a scratch database on --postgres-url; the fault is terminated connections).
        #[arg(long, value_enum, default_value_t = ConvergeCrm::Sqlite)]
        crm: ConvergeCrm,
        /// The PostgreSQL server for `--crm postgres` (a user that may create databases).
        #[arg(
            long,
            env = "PG_TEST_URL",
            hide_env_values = true,
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        postgres_url: String,
    },
}

/// Where `converge` runs the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvergeEngine {
    /// In the harness's process.
    InProcess,
    /// As a child process per cycle, killed with SIGKILL.
    Process,
}

/// The database of `converge`'s demo CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvergeCrm {
    /// A SQLite file.
    Sqlite,
    /// A scratch PostgreSQL database.
    Postgres,
    /// The HubSpot simulator, through the HubSpot adapter (leads and contacts).
    Hubspot,
}

/// Arguments of `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// A config directory whose default.toml, demo.toml and mapping files are used instead of
    /// the copy built into the binary.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the status page listens (default: the http.listen setting, 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Stop after this many cycles (default: run until Ctrl-C).
    #[arg(long)]
    pub cycles: Option<u32>,
    /// Keep the SQLite files here (default: a temporary directory removed at exit).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Seconds between cycles.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    /// Seed of the sample data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Append the logs (JSON lines) to this file. By default the demo prints only its own
    /// narration and errors.
    #[arg(long, conflicts_with = "verbose")]
    pub log_file: Option<PathBuf>,
    /// Print the logs on standard error (also when RUST_LOG is set).
    #[arg(long)]
    pub verbose: bool,
    /// The CRM to embed: `sql` (the demo CRM in SQLite) or `hubspot` (the HubSpot simulator,
    /// with the example configuration of config/examples/hubspot).
    #[arg(long, value_enum, default_value_t = DemoCrmArg::Sql)]
    pub crm: DemoCrmArg,
}

/// The CRM `demo` embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoCrmArg {
    /// The demo CRM in a SQLite file.
    Sql,
    /// The HubSpot simulator.
    Hubspot,
}

impl DemoArgs {
    /// Where the demo's logs go.
    fn logs(&self) -> crate::telemetry::DemoLogs {
        use crate::telemetry::DemoLogs;
        match &self.log_file {
            Some(path) => DemoLogs::File(path.clone()),
            None if self.verbose || std::env::var_os("RUST_LOG").is_some() => DemoLogs::Stderr,
            None => DemoLogs::Quiet,
        }
    }
}

/// Arguments of `health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The daemon's base URL (default: from MKSYNC__HTTP__LISTEN, else http://127.0.0.1:8080;
    /// 0.0.0.0 is asked on 127.0.0.1). A URL with a path is asked as is.
    #[arg(long, env = "MKSYNC_HEALTH_URL")]
    pub url: Option<String>,
    /// Ask /readyz (ready to sync) instead of /healthz (alive).
    #[arg(long)]
    pub ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// The config directory and environment of the commands that open the state store.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// The config directory (default.toml, <env>.toml, mappings/).
    #[arg(long, default_value = "config")]
    pub config: PathBuf,
    /// The environment name, selecting <env>.toml.
    #[arg(long, env = "MKSYNC_ENV")]
    pub env: Option<String>,
}

impl ConfigArgs {
    fn source(&self) -> crate::config::SettingsSource {
        crate::config::SettingsSource::new(self.config.clone(), self.env.as_deref())
    }
}

/// The `errors` subcommands.
#[derive(Debug, Subcommand)]
pub enum ErrorsCommand {
    /// Lists sync errors, most recently seen first.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only errors with this status.
        #[arg(long, value_enum, default_value_t = ErrorStatusArg::Open)]
        status: ErrorStatusArg,
        /// Only errors of this object.
        #[arg(long)]
        object: Option<String>,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Print one JSON array (`[]` when there are none) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retries an error (or every open one) at the next cycle.
    Retry {
        #[command(flatten)]
        config: ConfigArgs,
        /// The error's id (from `errors list`).
        #[arg(required_unless_present = "all", conflicts_with = "all", value_parser = error_id_arg)]
        id: Option<uuid::Uuid>,
        /// Retry every open error.
        #[arg(long)]
        all: bool,
    },
    /// Discards an error: it is not retried again.
    Discard {
        #[command(flatten)]
        config: ConfigArgs,
        /// The error's id (from `errors list`).
        #[arg(value_parser = error_id_arg)]
        id: uuid::Uuid,
    },
}

/// An error status, as `errors list --status` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorStatusArg {
    /// Not settled: retried at its next retry time.
    Open,
    /// Given up by an operator.
    Discarded,
    /// Fixed by a later sync.
    Resolved,
}

impl From<ErrorStatusArg> for crate::store::ErrorStatus {
    fn from(arg: ErrorStatusArg) -> Self {
        match arg {
            ErrorStatusArg::Open => crate::store::ErrorStatus::Open,
            ErrorStatusArg::Discarded => crate::store::ErrorStatus::Discarded,
            ErrorStatusArg::Resolved => crate::store::ErrorStatus::Resolved,
        }
    }
}

/// The side that won a conflict, as `conflicts list --winner` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WinnerArg {
    /// Marketo's value was kept.
    Marketo,
    /// The CRM's value was kept.
    Crm,
}

impl From<WinnerArg> for crate::model::Side {
    fn from(arg: WinnerArg) -> Self {
        match arg {
            WinnerArg::Marketo => crate::model::Side::Marketo,
            WinnerArg::Crm => crate::model::Side::Crm,
        }
    }
}

/// The `conflicts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// Lists conflicts, newest first.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only conflicts of this object (e.g. leads).
        #[arg(long)]
        object: Option<String>,
        /// Only conflicts on this field (its canonical name in the mapping).
        #[arg(long)]
        field: Option<String>,
        /// Only conflicts this side won.
        #[arg(long, value_enum)]
        winner: Option<WinnerArg>,
        /// Only conflicts settled since then: a date (2026-03-01), an RFC 3339 instant, or an
        /// age (24h, 30m, 7d).
        #[arg(long, value_parser = since_arg)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Print one JSON array (`[]` when there are none) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn error_id_arg(text: &str) -> Result<uuid::Uuid, String> {
    crate::app::ops::parse_error_id(text).map_err(|e| e.to_string())
}

fn since_arg(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    crate::app::ops::parse_since(text, chrono::Utc::now()).map_err(|e| e.to_string())
}

fn until_arg(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let now = chrono::Utc::now();
    let until = crate::app::ops::parse_until_at(text, now).map_err(|e| e.to_string())?;
    if until <= now {
        return Err(format!("{} is not in the future", until.to_rfc3339()));
    }
    Ok(until)
}

/// The `mappings` subcommands.
#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// Reads both schemas and writes a proposed mapping file for the operator to edit.
    Suggest {
        /// The config directory; the proposal goes to <config>/mappings/<name>.suggested.toml.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// A directory of ObjectSchema JSON snapshots holding both objects (default: read both
        /// live with the settings of --config).
        #[arg(long)]
        schemas: Option<PathBuf>,
        /// The environment name, selecting <env>.toml.
        #[arg(long, env = "MKSYNC_ENV")]
        env: Option<String>,
        /// The Marketo object (lead, company, opportunity, ...).
        #[arg(long)]
        marketo_object: String,
        /// The CRM object.
        #[arg(long)]
        crm_object: String,
        /// The mapping name (default: the CRM object).
        #[arg(long)]
        name: Option<String>,
        /// Write here instead ("-" for standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// Arguments of `simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: String,
    /// Number of generated leads.
    #[arg(long, default_value_t = 1000)]
    pub leads: usize,
    /// Seed of the data generator and of the faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Client id to accept (generated when absent).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Client secret to accept (generated when absent).
    #[arg(long, env = "MKSYNC_SIM_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Sim seconds a bulk export spends processing.
    #[arg(long, default_value_t = 120)]
    pub export_delay: u64,
    /// Sim seconds a bulk import spends queued before it runs.
    #[arg(long, default_value_t = 10)]
    pub import_delay: u64,
    /// Counted calls a day before 607.
    #[arg(long, default_value_t = 50_000)]
    pub daily_quota: u64,
    /// Bulk export MiB a day before 1029.
    #[arg(long, default_value_t = 500)]
    pub bulk_daily_mb: u64,
    /// Fault profile: none, flaky, hostile, or rules like `route=leads,kind=5xx,rate=0.1`.
    #[arg(long, default_value = "none")]
    pub faults: String,
    /// Reject the bulk lead export `updatedAt` filter with 1035, like a subscription without it
    /// (by default the filter is supported).
    #[arg(long)]
    pub no_updated_at_filter: bool,
}

/// Arguments of `simulate-hubspot`.
#[derive(Debug, clap::Args)]
pub struct SimulateHubspotArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Private-app access token to accept (generated when absent).
    #[arg(long, env = "MKSYNC_SIM_HUBSPOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seed of the data generator and of the faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of generated contacts (companies a quarter, deals a fifth of them).
    #[arg(long, default_value_t = 100)]
    pub contacts: usize,
    /// Account tier of the rate limits: starter, professional, enterprise or api-add-on.
    #[arg(long, default_value = "professional")]
    pub tier: String,
    /// Fault profile: none, flaky, hostile, or rules like `route=batch,kind=5xx,rate=0.1`.
    #[arg(long, default_value = "none")]
    pub faults: String,
}

/// Arguments of `bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The config directory (default.toml, <env>.toml, mappings/).
    #[arg(long, default_value = "config")]
    pub config: PathBuf,
    /// The environment name, selecting <env>.toml.
    #[arg(long, env = "MKSYNC_ENV")]
    pub env: Option<String>,
    /// Only these objects (repeatable); every object in sync.objects when absent.
    /// `--object program_members` alone reads every selected program's members again and
    /// removes the CRM rows of members Marketo no longer has (the repair).
    #[arg(long = "object")]
    pub objects: Vec<String>,
    /// Start here (a date or RFC 3339 instant) instead of the configured low watermarks. For
    /// program members: read only the members changed since (by `updatedAt`, 7 days a call)
    /// instead of every member, and remove nothing.
    #[arg(long)]
    pub since: Option<String>,
    /// Create no export and write nothing; print an estimate of the exports, megabytes,
    /// Marketo calls and time, with its assumptions.
    #[arg(long)]
    pub dry_run: bool,
    /// Run even while sync is paused (never while another process holds the lease).
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds between status reads of an export job (Marketo updates a job's status about
    /// once a minute).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub export_poll_secs: u64,
    /// Load the members of this static list (by id) in one lead export instead of the leads
    /// created since the low watermark in 31-day windows (replaces the list the `bootstrap`
    /// settings name). One list flag at most.
    #[arg(
        long,
        value_name = "ID",
        value_parser = clap::value_parser!(i64).range(1..),
        conflicts_with_all = ["static_list_name", "smart_list_id", "smart_list_name"]
    )]
    pub static_list_id: Option<i64>,
    /// As --static-list-id, the static list by its exact name.
    #[arg(
        long,
        value_name = "NAME",
        value_parser = clap::builder::NonEmptyStringValueParser::new(),
        conflicts_with_all = ["smart_list_id", "smart_list_name"]
    )]
    pub static_list_name: Option<String>,
    /// As --static-list-id, a smart list by id. Where the subscription lacks the smart list
    /// filter (Marketo answers 1035) the run warns and loads by windows instead.
    #[arg(
        long,
        value_name = "ID",
        value_parser = clap::value_parser!(i64).range(1..),
        conflicts_with = "smart_list_name"
    )]
    pub smart_list_id: Option<i64>,
    /// As --smart-list-id, the smart list by its exact name.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub smart_list_name: Option<String>,
}

impl BootstrapArgs {
    /// Returns the list the flags name for the lead phase (none: the settings decide).
    pub fn lead_list(&self) -> Option<crate::marketo::bulk_extract::LeadList> {
        crate::marketo::bulk_extract::LeadList::by_kind(
            self.static_list_id,
            self.static_list_name.as_deref(),
            self.smart_list_id,
            self.smart_list_name.as_deref(),
        )
        .into_iter()
        .flatten()
        .next()
    }
}

/// The `crm` subcommands.
#[derive(Debug, Subcommand)]
pub enum CrmCommand {
    /// Installs the change-log table and triggers for the objects with `changelog = true`.
    InstallChangelog {
        /// The configuration directory whose `[crm]` settings name the database and objects
        /// (default `config`); ignored when --url and --options are given.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// The environment name, selecting <env>.toml.
        #[arg(long, env = "MKSYNC_ENV")]
        env: Option<String>,
        /// The CRM database URL.
        #[arg(long, env = "MKSYNC_CRM_URL", hide_env_values = true)]
        url: Option<String>,
        /// The SQL adapter options, as a JSON or TOML file.
        #[arg(long)]
        options: Option<std::path::PathBuf>,
    },
    /// Creates the demo CRM's tables (users, accounts, contacts, leads, opportunities,
    /// opportunity_contact_roles, vehicles; earlier demo tables are dropped) with sample rows,
    /// as `demo` does; `scripts/bench-peers` bootstraps into an empty one.
    InstallDemo {
        /// The database URL (`sqlite://file`, `postgres://...`, `mysql://...`).
        #[arg(long, env = "MKSYNC_CRM_URL", hide_env_values = true)]
        url: String,
        /// Sample contacts (the other tables in proportion; 0 for empty tables).
        #[arg(long, default_value_t = 0)]
        contacts: usize,
        /// Seed of the sample rows.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// HubSpot: creates the unique Marketo-id property (`marketo_id_property`) of every
    /// writable object that does not have it yet.
    Prepare {
        /// The configuration directory whose `[crm]` settings name the portal and objects
        /// (default `config`).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// The environment name, selecting <env>.toml.
        #[arg(long, env = "MKSYNC_ENV")]
        env: Option<String>,
    },
}

impl Command {
    /// Returns true for the commands that print a report and exit (their logs default to errors
    /// only; `RUST_LOG` shows more).
    fn is_report(&self) -> bool {
        matches!(
            self,
            Command::Validate { .. }
                | Command::Mappings { .. }
                | Command::Status { .. }
                | Command::Errors { .. }
                | Command::Conflicts { .. }
                | Command::Pause { .. }
                | Command::Resume(_)
                | Command::Health(_)
        )
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // The demo's logs go to a file or stay quiet, away from its narration; installed first, so
    // the `init` below leaves it in place.
    if let Command::Demo(args) = &cli.command
        && let Err(error) = crate::telemetry::init_demo(&args.logs())
    {
        let file = args.log_file.as_deref().unwrap_or(std::path::Path::new(""));
        eprintln!(
            "error: cannot open the log file {}: {error}",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let level = if cli.command.is_report() {
        "error"
    } else {
        "info"
    };
    crate::telemetry::init_at(crate::telemetry::default_format(), level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, cli.color)) {
        Ok(code) => code,
        // `marketo-sync errors list | head`: the reader has all it wants; stop quietly.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", render_error(&error));
            exit_code(&error)
        }
    }
}

/// The exit code of a failed command: 2 for a usage error (as clap exits for the arguments it
/// rejects), 3 when the command was refused for now (paused, or another process holds the
/// lease) or stopped by Marketo's daily quota, 1 for anything else.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    if let Some(crate::engine::EngineError::Paused { .. }) =
        error.downcast_ref::<crate::engine::EngineError>()
    {
        return ExitCode::from(3);
    }
    match error.downcast_ref::<crate::app::AppError>() {
        Some(crate::app::AppError::InvalidArgument { .. }) => ExitCode::from(2),
        Some(crate::app::AppError::Refused { .. }) => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    }
}

/// Returns whether writing to standard output failed because the reader went away.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes one line to standard output, returning an error (not panicking like `println!`)
/// when the reader has gone.
fn say(line: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

async fn dispatch(
    command: Command,
    color: crate::app::ops::ColorChoice,
) -> anyhow::Result<ExitCode> {
    use crate::app::ops;
    let now = chrono::Utc::now;
    match command {
        Command::Run(args) => {
            let loaded = crate::config::load(&args.source())?;
            let (runner, store) = crate::app::build_engine(&loaded).await?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            crate::app::install_signal_handlers(shutdown.clone())?;
            crate::app::run_daemon_on(loaded, store, runner, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let options = crate::app::demo::DemoOptions {
                logs: args.logs(),
                config: args.config,
                listen: args.listen,
                cycles: args.cycles,
                state_dir: args.state_dir,
                seed: args.seed,
                interval: std::time::Duration::from_secs(args.interval.max(1)),
                crm: match args.crm {
                    DemoCrmArg::Sql => crate::app::demo::DemoCrm::Sql,
                    DemoCrmArg::Hubspot => crate::app::demo::DemoCrm::HubSpot,
                },
                ..crate::app::demo::DemoOptions::default()
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            crate::app::install_signal_handlers(shutdown.clone())?;
            let out: std::sync::Arc<std::sync::Mutex<dyn std::io::Write + Send>> =
                std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
            crate::app::demo::run_demo(options, out, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health(args) => {
            use crate::app::health;
            let options = health::HealthOptions {
                url: args.url.unwrap_or_else(|| {
                    health::default_url(std::env::var("MKSYNC__HTTP__LISTEN").ok().as_deref())
                }),
                ready: args.ready,
                timeout: std::time::Duration::from_secs(args.timeout.max(1)),
            };
            let healthy = health::check(&options).await?;
            println!("ok: {} {} {}", healthy.url, healthy.status, healthy.body);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let (settings, store) = ops::open_store(&config.source()).await?;
            let facts = ops::status_facts(
                store,
                &crate::app::instance_id(&settings),
                u64::from(settings.marketo.daily_call_budget),
                u64::from(settings.marketo.bulk_mb_budget) * 1024 * 1024,
                std::sync::Arc::new(crate::store::SystemClock),
            )
            .await?;
            let render = ops::Render::for_stdout(color, now());
            let mut out = std::io::stdout().lock();
            ops::write_status_with(&facts, json, &render, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Errors { command } => match command {
            ErrorsCommand::List {
                config,
                status,
                object,
                limit,
                json,
            } => {
                let args = ops::ErrorsListArgs {
                    status: Some(status.into()),
                    object,
                    limit,
                    json,
                };
                let (_, store) = ops::open_store(&config.source()).await?;
                let render = ops::Render::for_stdout(color, now());
                let mut out = std::io::stdout().lock();
                ops::errors_list(store.as_ref(), &args, &render, &mut out).await?;
                std::io::Write::flush(&mut out)?;
                Ok(ExitCode::SUCCESS)
            }
            ErrorsCommand::Retry { config, id, all } => {
                let (_, store) = ops::open_store(&config.source()).await?;
                match id {
                    Some(id) if !all => {
                        ops::errors_retry(store.as_ref(), id, now()).await?;
                        say(format_args!("error {id} will be retried at the next cycle"))?;
                    }
                    _ => {
                        let n = ops::errors_retry_all(store.as_ref(), now()).await?;
                        say(format_args!(
                            "{n} error(s) will be retried at the next cycle"
                        ))?;
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ErrorsCommand::Discard { config, id } => {
                let (_, store) = ops::open_store(&config.source()).await?;
                ops::errors_discard(store.as_ref(), id).await?;
                say(format_args!("error {id} discarded"))?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Conflicts {
            command:
                ConflictsCommand::List {
                    config,
                    object,
                    field,
                    winner,
                    since,
                    limit,
                    json,
                },
        } => {
            let filter = crate::store::ConflictFilter {
                object,
                field,
                winner: winner.map(Into::into),
                since,
                limit,
            };
            let (_, store) = ops::open_store(&config.source()).await?;
            let render = ops::Render::for_stdout(color, now());
            let mut out = std::io::stdout().lock();
            ops::conflicts_list(store.as_ref(), &filter, json, &render, &mut out).await?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause {
            config,
            reason,
            until,
        } => {
            let (_, store) = ops::open_store(&config.source()).await?;
            let state =
                ops::pause(store.as_ref(), &ops::PauseArgs { reason, until }, now()).await?;
            match state.until {
                Some(until) => say(format_args!(
                    "paused until {} ({}): {}",
                    ops::short_time(until),
                    ops::relative(until, now()),
                    state.reason
                ))?,
                None => say(format_args!(
                    "paused until `marketo-sync resume`: {}",
                    state.reason
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Converge {
            seeds,
            first_seed,
            steps,
            config,
            leads_only,
            no_activities,
            marketing,
            no_faults,
            no_kills,
            engine,
            crm,
            postgres_url,
        } => {
            use crate::converge::{ConvergeOptions, CrmKind, EngineMode, Schedule};
            let engine = match engine {
                ConvergeEngine::InProcess => EngineMode::InProcess,
                ConvergeEngine::Process => EngineMode::Process {
                    binary: std::env::current_exe()?,
                },
            };
            let crm = match crm {
                ConvergeCrm::Sqlite => CrmKind::Sqlite,
                ConvergeCrm::Postgres => CrmKind::Postgres {
                    server_url: secrecy::SecretString::from(postgres_url),
                },
                ConvergeCrm::Hubspot => CrmKind::HubSpot,
            };
            let options = ConvergeOptions {
                steps,
                faults: !no_faults,
                kills: !no_kills,
                engine,
                crm,
                schedule: match (leads_only, no_activities, marketing) {
                    (true, _, _) => Schedule::LeadsOnly,
                    (false, true, _) => Schedule::NoActivities,
                    (false, false, true) => Schedule::Marketing,
                    (false, false, false) => Schedule::Full,
                },
                ..ConvergeOptions::new(config)
            };
            let ok = crate::converge::run_many(first_seed, seeds, &options, &mut std::io::stdout())
                .await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Resume(config) => {
            let (_, store) = ops::open_store(&config.source()).await?;
            match ops::resume_pause(store.as_ref()).await? {
                Some(pause) if pause.kind == crate::store::PauseKind::Quota => say(format_args!(
                    "resumed: ended the Marketo quota pause ({}); if today's quota is still \
                     spent, the next cycle pauses again until the Marketo day turns",
                    pause.reason
                ))?,
                Some(pause) => say(format_args!("resumed: ended the pause ({})", pause.reason))?,
                None => say("was not paused")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            config,
            schemas,
            env,
            offline,
            json,
            deny_warnings,
        } => {
            let args = crate::app::ValidateArgs {
                config,
                schemas,
                env,
                offline,
                json,
                deny_warnings,
                color: ops::Render::for_stdout(color, now()).color,
            };
            let ok = crate::app::run_validate(&args, &mut std::io::stdout()).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Mappings {
            command:
                MappingsCommand::Suggest {
                    config,
                    schemas,
                    env,
                    marketo_object,
                    crm_object,
                    name,
                    output,
                },
        } => {
            let args = crate::app::SuggestArgs {
                config,
                schemas,
                env,
                marketo_object,
                crm_object,
                name,
                output,
            };
            crate::app::run_suggest(&args, &mut std::io::stdout())
                .await
                .map_err(|message| anyhow::anyhow!(message))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            let options = crate::sim::SimulateOptions {
                listen: args.listen,
                leads: args.leads,
                seed: args.seed,
                client_id: args.client_id,
                client_secret: args.client_secret.map(secrecy::SecretString::from),
                export_delay: std::time::Duration::from_secs(args.export_delay),
                import_delay: std::time::Duration::from_secs(args.import_delay),
                daily_quota: args.daily_quota,
                bulk_daily_bytes: args.bulk_daily_mb.saturating_mul(1024 * 1024),
                faults: args.faults,
                updated_at_filter: !args.no_updated_at_filter,
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            crate::sim::run_simulate(options, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SimulateHubspot(args) => {
            let options = crate::sim::hubspot::SimulateHubSpotOptions {
                listen: args.listen,
                token: args.token.map(secrecy::SecretString::from),
                seed: args.seed,
                contacts: args.contacts,
                tier: args
                    .tier
                    .parse()
                    .map_err(|message: String| anyhow::anyhow!(message))?,
                faults: args.faults,
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            crate::sim::hubspot::run_simulate_hubspot(options, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            once,
            config,
            env,
            dry_run,
            force,
            json,
            record,
        } => {
            if let Some(record) = record {
                return sync_record(&config, env.as_deref(), &record, force, json).await;
            }
            if !once {
                anyhow::bail!(
                    "`sync` needs --once or --record OBJECT:ID; the daemon runs with `run`"
                );
            }
            let claim = ops::claim_run(
                &config,
                env.as_deref(),
                ops::RunRequest::sync_once(dry_run, force),
            )
            .await?;
            let cancel = claim.token();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let summary = match crate::engine::once::run_once(
                &config,
                env.as_deref(),
                dry_run,
                &cancel,
            )
            .await
            {
                Ok(summary) => summary,
                Err(crate::engine::EngineError::Paused {
                    reason,
                    until: Some(until),
                }) if !dry_run => {
                    // Marketo's daily quota ran out: keep the pause in the store, as the
                    // daemon does, so `status` shows it and the daemon honours it.
                    let source = crate::config::SettingsSource::new(&config, env.as_deref());
                    ops::record_quota_pause(&source, &reason, until).await?;
                    return Err(crate::engine::EngineError::Paused {
                        reason,
                        until: Some(until),
                    }
                    .into());
                }
                Err(error) => return Err(error.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.render_text());
            }
            // Records waiting for their parent are not failures: a healthy dry run exits 0.
            // Records refused one by one are in the error ledger; 4 tells a script to look.
            Ok(if summary.failed() > 0 {
                ExitCode::from(4)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Bootstrap(args) => {
            let claim = ops::claim_run(
                &args.config,
                args.env.as_deref(),
                ops::RunRequest::bootstrap(args.dry_run, args.force),
            )
            .await?;
            run_bootstrap(args, claim.token()).await
        }
        Command::Crm {
            command: CrmCommand::Prepare { config, env },
        } => {
            let dir = config.unwrap_or_else(|| PathBuf::from("config"));
            let source = crate::config::SettingsSource::new(dir, env.as_deref());
            let loaded = crate::config::load(&source).map_err(config_error)?;
            let crm = &loaded.settings.crm;
            let done = crate::crm::hubspot::prepare::prepare_configured(
                &crm.adapter,
                crm.url.as_ref(),
                &crm.options,
            )
            .await?;
            for line in &done {
                println!("{line}");
            }
            let refused = done
                .iter()
                .any(|p| matches!(p, crate::crm::hubspot::prepare::Prepared::NotUnique { .. }));
            Ok(if refused {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Crm {
            command:
                CrmCommand::InstallDemo {
                    url,
                    contacts,
                    seed,
                },
        } => {
            let summary = crate::sim::demo_crm::install(&url, seed, contacts).await?;
            println!("demo crm installed: {:?}", summary.rows);
            Ok(ExitCode::SUCCESS)
        }
        Command::Crm {
            command:
                CrmCommand::InstallChangelog {
                    config,
                    env,
                    url,
                    options,
                },
        } => {
            let (url, options) = match (url, options) {
                (Some(url), Some(options)) => (
                    secrecy::SecretString::from(url),
                    crate::crm::sql::changelog::options_from_file(&options)?,
                ),
                (None, None) => {
                    let dir = config.unwrap_or_else(|| PathBuf::from("config"));
                    let source = crate::config::SettingsSource::new(dir, env.as_deref());
                    let loaded = crate::config::load(&source).map_err(config_error)?;
                    let crm = loaded.settings.crm;
                    let Some(url) = crm.url else {
                        anyhow::bail!("crm.url is not set (MKSYNC__CRM__URL or crm.url_file)");
                    };
                    (url, crate::crm::sql::SqlOptions::from_json(&crm.options)?)
                }
                _ => anyhow::bail!(
                    "crm install-changelog takes --url and --options together, or neither (then both come from --config)"
                ),
            };
            let objects = crate::crm::sql::changelog::install(&url, &options).await?;
            println!("change log installed for: {}", objects.join(", "));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Turns a configuration error into one message listing every problem as the diagnostics
/// `validate` prints (coloured on a terminal unless `NO_COLOR` is set).
fn config_error(error: crate::config::ConfigError) -> anyhow::Error {
    anyhow::anyhow!(
        "invalid configuration ({} problem(s)); `marketo-sync validate` checks everything in one pass:\n{}",
        error.problems().len(),
        error.render(crate::config::stderr_color())
    )
}

/// Runs `bootstrap`; `cancel` stops it at a safe point (Ctrl-C, or the lease lost to another
/// process).
async fn run_bootstrap(
    args: BootstrapArgs,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    use crate::engine::bootstrap;
    let source = crate::config::SettingsSource::new(&args.config, args.env.as_deref());
    let loaded = crate::config::load(&source)?;
    let since = match &args.since {
        Some(text) => Some(crate::config::parse_instant(text).ok_or_else(|| {
            anyhow::anyhow!("--since `{text}` is not a date or an RFC 3339 instant")
        })?),
        None => None,
    };
    let ctx = crate::engine::Context::from_settings(&loaded).await?;
    let lead_list = args.lead_list();
    let options = bootstrap::BootstrapOptions {
        lead_list,
        objects: args.objects,
        since,
        dry_run: args.dry_run,
        export: Some(crate::marketo::bulk_extract::ExportOptions {
            poll_interval: std::time::Duration::from_secs(args.export_poll_secs),
            ..crate::marketo::bulk_extract::ExportOptions::default()
        }),
        ..bootstrap::BootstrapOptions::default()
    };
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let progress = bootstrap::IndicatifProgress::new();
    let report = bootstrap::bootstrap(&ctx, &options, &progress, &cancel).await?;
    if args.json {
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    if let Some(until) = report.paused_until {
        eprintln!("bootstrap paused by the daily bulk budget; run it again after {until}");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sync --record OBJECT:ID`: one CRM record to Marketo, holding the sync lease meanwhile.
async fn sync_record(
    config: &std::path::Path,
    env: Option<&str>,
    record: &str,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::engine::CrmRecordOutcome;
    let (object, id) = crate::engine::once::parse_record_arg(record)?;
    let claim = crate::app::ops::claim_run(
        config,
        env,
        crate::app::ops::RunRequest::sync_once(false, force),
    )
    .await?;
    let cancel = claim.token();
    let source = crate::config::SettingsSource::new(config, env);
    let outcome = crate::engine::once::run_record_with(&source, &object, &id, &cancel).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    match outcome {
        CrmRecordOutcome::Synced | CrmRecordOutcome::Unchanged => {
            if !json {
                println!(
                    "{object}:{id}: {}",
                    if outcome == CrmRecordOutcome::Synced {
                        "synced to Marketo"
                    } else {
                        "unchanged (Marketo already agrees)"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CrmRecordOutcome::Deferred => {
            if !json {
                println!(
                    "{object}:{id}: deferred: the on-demand share of today's Marketo budget is spent; the next poll carries it"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CrmRecordOutcome::Refused { code, message } => {
            eprintln!(
                "{object}:{id}: refused by Marketo ({code}): {message}; the error ledger holds it (`marketo-sync errors list`)"
            );
            Ok(ExitCode::from(4))
        }
        CrmRecordOutcome::NotFound => {
            anyhow::bail!("{object}:{id}: no live {object} record with id `{id}` in the CRM")
        }
        CrmRecordOutcome::UnknownObject { known } => anyhow::bail!(
            "{object}:{id}: unknown object `{object}`; synced objects: {}",
            known.join(", ")
        ),
        CrmRecordOutcome::PollOnly => anyhow::bail!(
            "{object}:{id}: `{object}` syncs on the poll only (activities, programs, program members and static list membership); on-demand sync covers the objects the CRM writes to Marketo"
        ),
    }
}

/// Returns the error with its causes, leaving out a cause whose text the message already holds
/// (most of our errors quote their cause), so each fact is printed once.
fn render_error(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}
