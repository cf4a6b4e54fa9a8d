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
    /// CRM adapter maintenance.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
    /// Runs the sync: `--once` runs one cycle and prints its summary as JSON.
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
        /// Plan without writing anything; print the plan.
        #[arg(long)]
        dry_run: bool,
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
        Command::Sync {
            once,
            config,
            env,
            dry_run,
        } => {
            if !once {
                anyhow::bail!("only `sync --once` is available here; the daemon runs with `run`");
            }
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let summary =
                crate::engine::once::run_once(&config, env.as_deref(), dry_run, &cancel).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(if summary.failed() > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
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
