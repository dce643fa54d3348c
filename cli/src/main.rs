//! The `kiln` binary: `kiln run` runs a buildspec locally in Docker, `kiln lint` checks buildspecs,
//! `kiln worker` runs builds for a coordinator.
//! Exit status: 0 success (for `worker`: drained); 1 a build that did not succeed, or Docker that
//! could not be reached; 2 invalid input (nothing ran); 130 a second Ctrl-C (exit at once).

mod args;
mod host;
mod lint;
mod run;
mod terminal;
mod worker;

use std::process::ExitCode;

use clap::Parser;

// No `Debug`: the arguments hold secret values (`--secret`).
#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a self-hosted, CodeBuild-compatible build farm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the buildspec of a checkout locally in Docker, as CodeBuild would
    Run(Box<run::RunArgs>),
    /// Check buildspec files; exit 0 when all are valid, 2 otherwise
    Lint(lint::LintArgs),
    /// Run builds for a coordinator until SIGTERM or Ctrl-C (which drains first)
    Worker(Box<worker::WorkerArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Lint(args) => lint::lint(&args),
        Command::Run(args) => run::run(*args),
        Command::Worker(args) => worker::worker(*args),
    }
}
