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
    }
}
