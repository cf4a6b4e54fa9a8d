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
pub enum Command {}

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
    match command {}
}
