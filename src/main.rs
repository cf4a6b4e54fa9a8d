//! The `marketo-sync` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = marketo_sync::cli::Cli::parse();
    marketo_sync::cli::main(cli)
}
