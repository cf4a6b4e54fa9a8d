//! The command-line commands. Each one parses its arguments here and calls into the library;
//! this is the only place (with `main.rs`) where `anyhow` is used.

use std::process::ExitCode;

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
    /// CRM adapter maintenance.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
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
