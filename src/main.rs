//! The `marketo-sync` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    quiet_broken_pipe();
    let cli = marketo_sync::cli::Cli::parse();
    marketo_sync::cli::main(cli)
}

/// `marketo-sync ... | head`: when the reader goes away, `println!` panics with "failed printing
/// to stdout: Broken pipe". The commands report write errors instead (and exit 0 quietly on a
/// broken pipe); this covers any `println!` left, so no command prints a panic for it.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(message) = info.payload_as_str()
            && message.starts_with("failed printing to std")
            && message.contains("Broken pipe")
        {
            std::process::exit(0);
        }
        default(info);
    }));
}
