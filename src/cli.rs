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
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks settings and mapping files and prints every problem with file, key and line.
    Validate {
        /// The config directory (default.toml, <env>.toml, mappings/).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// A directory of ObjectSchema JSON snapshots to check the mappings against offline.
        #[arg(long)]
        schemas: Option<PathBuf>,
        /// The environment name, selecting <env>.toml.
        #[arg(long, env = "MKSYNC_ENV")]
        env: Option<String>,
    },
    /// Mapping-file tools.
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Runs the Marketo simulator until Ctrl-C.
    Simulate(SimulateArgs),
    /// Loads both sides for the first time, resumably, within the daily bulk budget.
    Bootstrap(BootstrapArgs),
    /// CRM adapter maintenance.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
}

/// The `mappings` subcommands.
#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// Reads both schemas and writes a proposed mapping file for the operator to edit.
    Suggest {
        /// The config directory; the proposal goes to <config>/mappings/<name>.suggested.toml.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// A directory of ObjectSchema JSON snapshots holding both objects.
        #[arg(long)]
        schemas: PathBuf,
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
    /// Fault profile: none, flaky, hostile, or rules like `route=leads,kind=5xx,rate=0.1`.
    #[arg(long, default_value = "none")]
    pub faults: String,
    /// Accept the bulk lead export `updatedAt` filter (else 1035).
    #[arg(long)]
    pub updated_at_filter: bool,
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
    #[arg(long = "object")]
    pub objects: Vec<String>,
    /// Start here (a date or RFC 3339 instant) instead of the configured low watermarks.
    #[arg(long)]
    pub since: Option<String>,
    /// List the windows and the estimated exports without creating any.
    #[arg(long)]
    pub dry_run: bool,
}

/// The `crm` subcommands.
#[derive(Debug, Subcommand)]
pub enum CrmCommand {
    /// Installs the change-log table and triggers for the objects with `changelog = true`.
    InstallChangelog {
        /// The configuration directory (not read yet: pass --url and --options).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// The CRM database URL.
        #[arg(long, env = "MKSYNC_CRM_URL", hide_env_values = true)]
        url: Option<String>,
        /// The SQL adapter options, as a JSON or TOML file.
        #[arg(long)]
        options: Option<std::path::PathBuf>,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    crate::telemetry::init(crate::telemetry::default_format());
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
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate {
            config,
            schemas,
            env,
        } => {
            let args = crate::mapping::ValidateArgs {
                config,
                schemas,
                env,
            };
            let ok = crate::mapping::run_validate(&args, &mut std::io::stdout())?;
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
                    marketo_object,
                    crm_object,
                    name,
                    output,
                },
        } => {
            let args = crate::mapping::SuggestArgs {
                config,
                schemas,
                marketo_object,
                crm_object,
                name,
                output,
            };
            crate::mapping::run_suggest(&args, &mut std::io::stdout())
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
                faults: args.faults,
                updated_at_filter: args.updated_at_filter,
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
        Command::Bootstrap(args) => run_bootstrap(args).await,
        Command::Crm {
            command:
                CrmCommand::InstallChangelog {
                    config,
                    url,
                    options,
                },
        } => {
            let (Some(url), Some(options)) = (url, options) else {
                anyhow::bail!(
                    "crm install-changelog needs --url and --options (reading them from --config {} is not wired yet)",
                    config.map(|c| c.display().to_string()).unwrap_or_default()
                );
            };
            let options = crate::crm::sql::changelog::options_from_file(&options)?;
            let url = secrecy::SecretString::from(url);
            let objects = crate::crm::sql::changelog::install(&url, &options).await?;
            println!("change log installed for: {}", objects.join(", "));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_bootstrap(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    use crate::engine::bootstrap;
    let source = crate::config::SettingsSource::new(&args.config, args.env.as_deref());
    let loaded = crate::config::load(&source)?;
    let since = match &args.since {
        Some(text) => Some(crate::config::parse_instant(text).ok_or_else(|| {
            anyhow::anyhow!("--since `{text}` is not a date or an RFC 3339 instant")
        })?),
        None => None,
    };
    let ctx = bootstrap_context(&loaded, &args.config).await?;
    let options = bootstrap::BootstrapOptions {
        objects: args.objects,
        since,
        dry_run: args.dry_run,
        ..bootstrap::BootstrapOptions::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let progress = bootstrap::IndicatifProgress::new();
    let report = bootstrap::bootstrap(&ctx, &options, &progress, &cancel).await?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(until) = report.paused_until {
        eprintln!("bootstrap paused by the daily bulk budget; run it again after {until}");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the engine context from loaded settings.
// TODO(bootstrap): replace with `Context::from_settings(&Loaded)` once it is merged.
async fn bootstrap_context(
    loaded: &crate::config::Loaded,
    dir: &std::path::Path,
) -> anyhow::Result<crate::engine::Context> {
    use anyhow::Context as _;
    use secrecy::{ExposeSecret, SecretString};
    let read = |file: &std::path::Path| -> anyhow::Result<SecretString> {
        let path = if file.is_absolute() {
            file.to_path_buf()
        } else {
            dir.join(file)
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the secret file {}", path.display()))?;
        Ok(SecretString::from(text.trim().to_owned()))
    };
    let s = &loaded.settings;
    let m = &s.marketo;
    let base = m
        .rest_base_url()
        .ok_or_else(|| anyhow::anyhow!("marketo.base_url or marketo.munchkin_id is required"))?;
    let secret = match (&m.client_secret, &m.client_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(file)) => read(file)?,
        (None, None) => anyhow::bail!("the Marketo client secret is not set"),
    };
    let mut config = crate::marketo::ClientConfig::new(
        url::Url::parse(&base).context("marketo base url")?,
        m.client_id.clone().unwrap_or_default(),
        secret,
    );
    config.calls_per_20s = m.calls_per_20s;
    config.max_concurrency = m.max_concurrency as usize;
    config.daily_call_budget = u64::from(m.daily_call_budget);
    config.bulk_mb_budget = u64::from(m.bulk_mb_budget);
    config.request_timeout = Some(m.request_timeout());
    let marketo = crate::marketo::Client::new(config)?;
    let crm_url = match (&s.crm.url, &s.crm.url_file) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => read(file)?,
        (None, None) => anyhow::bail!("the CRM url is not set"),
    };
    let crm = crate::crm::registry::build(&s.crm.adapter, &crm_url, &s.crm.options).await?;
    let store_url = match &s.store.url_file {
        Some(file) => read(file)?,
        None => s.store.url.clone(),
    };
    let store = crate::store::open(store_url.expose_secret()).await?;
    Ok(crate::engine::Context {
        settings: std::sync::Arc::new(s.clone()),
        mappings: std::sync::Arc::new(loaded.mappings.clone()),
        marketo,
        crm,
        store,
        clock: std::sync::Arc::new(crate::store::SystemClock),
    })
}
