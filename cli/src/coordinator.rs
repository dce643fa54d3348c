//! `kiln coordinator`: the coordinator alone (workers connect with `kiln worker`). Settings come
//! from `--config FILE` (TOML, see `deploy/coordinator.toml`), then flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kiln_coordinator::{Coordinator, CoordinatorConfig};
use tokio_util::sync::CancellationToken;

use crate::args::parse_duration;
use crate::signals::StopSignals;

#[derive(clap::Args)]
pub struct CoordinatorArgs {
    /// Configuration file (TOML); flags override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:7420)
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// State: a directory (embedded store) or redis://host:port/db
    #[arg(long, env = "KILN_STATE")]
    state: Option<String>,
    /// Key prefix in Redis
    #[arg(long)]
    redis_prefix: Option<String>,
    /// Directory for sources and artifacts (default: ~/.local/state/kiln/server)
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A client token (repeatable); without tokens only loopback is allowed
    #[arg(long = "token", env = "KILN_TOKEN")]
    tokens: Vec<String>,
    /// The token workers join with
    #[arg(long, env = "KILN_JOIN_TOKEN")]
    join_token: Option<String>,
    /// Lease TTL, like 30s (workers beat every third of it)
    #[arg(long, value_parser = parse_duration)]
    lease_ttl: Option<Duration>,
    /// Assignments per build before worker losses make it FAULT
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Largest source archive accepted, in bytes
    #[arg(long)]
    max_upload_bytes: Option<u64>,
}

impl CoordinatorArgs {
    /// The configuration: file, then flags, then defaults.
    pub fn config(&self) -> anyhow::Result<CoordinatorConfig> {
        let mut config = match &self.config {
            Some(path) => CoordinatorConfig::load(path)?,
            None => CoordinatorConfig::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.state {
            config.state = v.clone();
        }
        if let Some(v) = &self.redis_prefix {
            config.redis_prefix = v.clone();
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if !self.tokens.is_empty() {
            config.client_tokens = self.tokens.clone();
        }
        if let Some(v) = &self.join_token {
            config.join_token = Some(v.clone());
        }
        if let Some(v) = self.lease_ttl {
            config.lease_ttl = v;
        }
        if let Some(v) = self.max_attempts {
            config.max_attempts = v;
        }
        if let Some(v) = self.max_upload_bytes {
            config.max_upload_bytes = v;
        }
        let default_dir = crate::host::state_dir()
            .map(|d| d.join("server"))
            .unwrap_or_else(|| PathBuf::from("kiln-data"));
        config.finish(&default_dir)
    }
}

pub fn coordinator(args: CoordinatorArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln coordinator: {e:#}");
            return ExitCode::from(2);
        }
    };
    crate::runtime("kiln coordinator", async move {
        let stop = CancellationToken::new();
        let coordinator = Coordinator::bind(config).await?;
        announce("kiln coordinator", &coordinator)?;
        tokio::spawn(stop_on_signal(stop.clone()));
        coordinator.serve(stop).await
    })
}

/// Prints the bound address, which tests and scripts read when they asked for port 0.
pub fn announce(who: &str, coordinator: &Coordinator) -> anyhow::Result<()> {
    eprintln!("{who}: listening on {}", coordinator.local_addr()?);
    Ok(())
}

/// Ctrl-C or SIGTERM stops serving (workers keep their builds and reconnect to the next
/// coordinator).
async fn stop_on_signal(stop: CancellationToken) {
    let Some(mut signals) = StopSignals::register() else {
        return;
    };
    signals.next().await;
    stop.cancel();
}
