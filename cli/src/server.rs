//! `kiln server`: the single-node farm: a coordinator (embedded state by default) and a local
//! worker in one process. The worker reaches the coordinator over loopback gRPC, exactly as a
//! remote `kiln worker` would, so there is one execution path. The first SIGTERM or Ctrl-C drains
//! the local worker (running builds finish), then the coordinator stops.

use std::net::SocketAddr;
use std::process::ExitCode;

use kiln_coordinator::Coordinator;
use kiln_worker::agent::run_agent;
use kiln_worker::docker::Engine;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{announce, CoordinatorArgs};
use crate::worker::{agent_config, drain_on_signal, LocalWorker, WorkerArgs};

#[derive(clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    #[command(flatten)]
    worker: LocalWorker,
    /// The local worker's config file: labels, networks, sandbox (see deploy/worker.toml; its
    /// coordinator and join token are this server's)
    #[arg(long)]
    worker_config: Option<std::path::PathBuf>,
}

pub fn server(args: ServerArgs) -> ExitCode {
    let config = match args.coordinator.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let join_token = config.join_token.clone();
    let local = args.worker;
    let worker_config = args.worker_config;
    crate::runtime("kiln server", async move {
        let coordinator = Coordinator::bind(config).await?;
        let addr = coordinator.local_addr()?;
        let agent = agent_config(WorkerArgs {
            coordinator: Some(format!("http://{}", loopback(addr))),
            join_token,
            config: worker_config,
            local,
        })?;
        let engine = Engine::connect().await?;
        announce("kiln server", &coordinator)?;
        let stop = CancellationToken::new();
        let serving = tokio::spawn(coordinator.serve(stop.clone()));
        let drain = CancellationToken::new();
        tokio::spawn(drain_on_signal(drain.clone()));
        let worked = run_agent(agent, engine, drain).await;
        stop.cancel();
        serving.await??;
        worked.map_err(anyhow::Error::from)
    })
}

/// Where the local worker connects: the listener's port on loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip().is_unspecified() {
        true => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        false => addr,
    }
}
