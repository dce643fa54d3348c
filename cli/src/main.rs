//! The `kiln` binary: `kiln run` runs a buildspec locally in Docker, `kiln lint` checks buildspecs,
//! the client commands (`start`, `logs`, `get`, `list`, `stop`, `artifacts`, `project`,
//! `network`, `cache`) talk to a Kiln server, `kiln coordinator` and `kiln worker` run a farm, `kiln
//! server` both in one.
//! Exit status: 0 success (for `worker`: drained); 1 a build that did not succeed, or Docker or
//! the server that could not be reached; 2 invalid input (nothing ran); 130 a second Ctrl-C.

mod args;
mod client;
mod coordinator;
mod host;
mod lint;
mod run;
mod server;
mod signals;
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
    /// Start a build on a Kiln server: upload a checkout (or name a git repository)
    Start(Box<client::StartArgs>),
    /// Print a build's log (-f: follow it until the build ends)
    Logs(client::LogsArgs),
    /// Show a build: status, phases, times, worker
    Get(client::GetArgs),
    /// List builds, newest first
    List(client::ListArgs),
    /// Stop a queued or running build
    Stop(client::StopArgs),
    /// Download a finished build's artifacts into a directory
    Artifacts(client::ArtifactsArgs),
    /// Create, update and show projects
    Project(client::ProjectArgs),
    /// For operators: the networks workers offer builds, and the builds attached now
    Network(client::NetworkArgs),
    /// A project's build caches: list them, or clear them so the next build starts cold
    Cache(client::CacheArgs),
    /// Run builds for a coordinator until SIGTERM or Ctrl-C (which drains first)
    Worker(Box<worker::WorkerArgs>),
    /// Run the coordinator (workers connect with `kiln worker`)
    Coordinator(Box<coordinator::CoordinatorArgs>),
    /// A single-node farm: the coordinator and a local worker in one process
    Server(Box<server::ServerArgs>),
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
        Command::Start(args) => client::execute("start", client::start(*args)),
        Command::Logs(args) => client::execute("logs", client::logs(args)),
        Command::Get(args) => client::execute("get", client::get(args)),
        Command::List(args) => client::execute("list", client::list(args)),
        Command::Stop(args) => client::execute("stop", client::stop(args)),
        Command::Artifacts(args) => client::execute("artifacts", client::artifacts(args)),
        Command::Project(args) => client::execute("project", client::project(args)),
        Command::Network(args) => client::execute("network", client::network(args)),
        Command::Cache(args) => client::execute("cache", client::cache(args)),
        Command::Worker(args) => worker::worker(*args),
        Command::Coordinator(args) => coordinator::coordinator(*args),
        Command::Server(args) => server::server(*args),
    }
}

/// Runs a long-lived command on a multi-threaded runtime; exit 1 with its error.
fn runtime(who: &str, work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(work));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: {e:#}");
            ExitCode::from(1)
        }
    }
}
