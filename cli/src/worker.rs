//! `kiln worker`: runs builds for a coordinator (the agent in `kiln_worker::agent`).
//!
//! Settings come from flags (or their environment variables), else the `--config` TOML file
//! (`deploy/worker.toml` documents every key), else the defaults. The first SIGTERM or Ctrl-C
//! drains the worker (no new builds; running ones finish and are reported, then it exits 0); a
//! second one exits at once, and the next start on this host reaps the containers left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_proto::v1::{HostPathGrant, OfferedNetwork, SandboxPolicy};
use kiln_worker::agent::{run_agent, AgentConfig};
use kiln_worker::docker::convert::DEFAULT_PIDS;
use kiln_worker::docker::Engine;
use kiln_worker::secrets::SecretStore;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::host;
use crate::run::DEFAULT_IMAGE;
use crate::signals::StopSignals;

/// Where a coordinator listens for workers by default.
const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7420";
const DEFAULT_SLOTS: u32 = 2;

// No `Debug`: the join token is a secret.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's address [default: http://127.0.0.1:7420]
    #[arg(long, env = "KILN_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The token the coordinator requires of workers
    #[arg(long, env = "KILN_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A TOML file with the same settings (flags override it)
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub local: LocalWorker,
}

/// What a worker is, apart from where it connects (shared with `kiln server`'s local worker).
#[derive(clap::Args)]
pub struct LocalWorker {
    /// This worker's stable id [default: the host name]
    #[arg(long)]
    id: Option<String>,
    /// A label projects can require, KEY=VALUE (repeatable; adds to the config file's)
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Builds run at once [default: 2]
    #[arg(long)]
    slots: Option<u32>,
    /// Image for builds that name none [default: kiln/build-image:bookworm]
    #[arg(long)]
    image: Option<String>,
    /// Secrets for PARAMETER_STORE / SECRETS_MANAGER variables: ID=VALUE lines, or a JSON object
    #[arg(long)]
    secrets_file: Option<PathBuf>,
}

/// The `--config` file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    coordinator: Option<String>,
    join_token: Option<String>,
    id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    slots: Option<u32>,
    image: Option<String>,
    secrets_file: Option<PathBuf>,
    #[serde(default)]
    networks: Vec<NetworkConfig>,
    #[serde(default)]
    sandbox: SandboxConfig,
}

/// `[[networks]]`: an operator network builds of the listed projects may join.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkConfig {
    name: String,
    /// Default: the name.
    docker_network: Option<String>,
    #[serde(default)]
    internal: bool,
    subnet: Option<String>,
    #[serde(default)]
    projects: Vec<String>,
}

/// `[sandbox]`: the exceptions to the default sandbox, per project, and the process limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxConfig {
    #[serde(default)]
    privileged: Vec<String>,
    #[serde(default)]
    docker_socket: Vec<String>,
    #[serde(default)]
    host_network: Vec<String>,
    #[serde(default)]
    host_paths: Vec<HostPathConfig>,
    pids_limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPathConfig {
    path: String,
    projects: Vec<String>,
}

/// Checks the file's networks and sandbox and turns them into the policy the worker announces.
fn policy(networks: Vec<NetworkConfig>, sandbox: SandboxConfig) -> anyhow::Result<SandboxPolicy> {
    let mut offered: Vec<OfferedNetwork> = Vec::new();
    for n in networks {
        let docker_network = n.docker_network.unwrap_or_else(|| n.name.clone());
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(&n.name) || !valid(&docker_network) {
            bail!(
                "[[networks]] {:?} (Docker network {docker_network:?}): names are letters, digits, \
                 -, _ and .",
                n.name
            );
        }
        if offered.iter().any(|o| o.name == n.name) {
            bail!("[[networks]] {:?} is defined twice", n.name);
        }
        if n.projects.is_empty() {
            bail!(
                "[[networks]] {:?}: `projects` is empty, so no build could use it; list the \
                 projects (or \"*\" for all)",
                n.name
            );
        }
        let subnet = n.subnet.unwrap_or_default();
        if !subnet.is_empty() && !subnet.contains('/') {
            bail!(
                "[[networks]] {:?}: subnet {subnet:?} is not CIDR (e.g. 10.90.0.0/24)",
                n.name
            );
        }
        offered.push(OfferedNetwork {
            name: n.name,
            docker_network,
            internal: n.internal,
            subnet,
            projects: n.projects,
        });
    }
    let mut host_paths = Vec::new();
    for h in sandbox.host_paths {
        if !kiln_proto::policy::is_clean_absolute(&h.path) {
            bail!(
                "[[sandbox.host_paths]] {:?}: use an absolute path without `.`, `..` or a \
                 trailing /",
                h.path
            );
        }
        host_paths.push(HostPathGrant {
            path: h.path,
            projects: h.projects,
        });
    }
    Ok(SandboxPolicy {
        networks: offered,
        privileged: sandbox.privileged,
        docker_socket: sandbox.docker_socket,
        host_network: sandbox.host_network,
        host_paths,
    })
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("invalid label {text:?}: expected KEY=VALUE")),
    }
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("worker config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("worker config {}", path.display()))
}

/// Flags over the file over the defaults; relative paths in the file are taken from its directory.
pub fn agent_config(args: WorkerArgs) -> anyhow::Result<AgentConfig> {
    let file = match &args.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    let base = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let pids_limit = file.sandbox.pids_limit.unwrap_or(DEFAULT_PIDS);
    if pids_limit < 16 {
        bail!("[sandbox] pids_limit = {pids_limit}: allow at least 16 processes per build");
    }
    let policy = policy(file.networks, file.sandbox)?;
    let mut labels = file.labels;
    labels.extend(args.local.labels);
    let slots = args.local.slots.or(file.slots).unwrap_or(DEFAULT_SLOTS);
    if slots == 0 {
        bail!("slots must be at least 1");
    }
    let mut secrets = SecretStore::default();
    let secrets_file = args
        .local
        .secrets_file
        .or_else(|| file.secrets_file.map(|p| base.join(p)));
    if let Some(path) = secrets_file {
        secrets.load_file(&path)?;
    }
    let coordinator = args
        .coordinator
        .or(file.coordinator)
        .unwrap_or_else(|| DEFAULT_COORDINATOR.to_string());
    if !(coordinator.starts_with("http://") || coordinator.starts_with("https://")) {
        bail!("coordinator {coordinator:?}: use http://host:port or https://host:port");
    }
    Ok(AgentConfig {
        coordinator,
        join_token: args
            .join_token
            .or(file.join_token)
            .filter(|t| !t.is_empty()),
        worker_id: args.local.id.or(file.id).unwrap_or_else(host::hostname),
        labels,
        slots,
        default_image: args
            .local
            .image
            .or(file.image)
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        secrets,
        owner: host::owner(),
        policy,
        pids_limit,
    })
}

pub fn worker(args: WorkerArgs) -> ExitCode {
    let config = match agent_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln worker: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The agent's log sinks block with `block_in_place`, which needs the multi-thread runtime.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln worker: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln worker: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let engine = Engine::connect().await?;
    let drain = CancellationToken::new();
    tokio::spawn(drain_on_signal(drain.clone()));
    tracing::info!(
        worker_id = config.worker_id,
        coordinator = config.coordinator,
        slots = config.slots,
        "worker starting"
    );
    run_agent(config, engine, drain).await?;
    Ok(())
}

/// The first SIGTERM or Ctrl-C drains; a second exits at once.
pub async fn drain_on_signal(drain: CancellationToken) {
    let Some(mut signals) = StopSignals::register() else {
        return;
    };
    signals.next().await;
    eprintln!("kiln worker: draining: running builds finish first (signal again to exit at once)");
    drain.cancel();
    signals.next().await;
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkerArgs,
    }

    fn args(argv: &[&str]) -> WorkerArgs {
        Cli::try_parse_from(std::iter::once("kiln").chain(argv.iter().copied()))
            .expect("args")
            .args
    }

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker.toml")
    }

    #[test]
    fn the_example_config_parses() {
        let file = read_file_config(&example()).expect("deploy/worker.toml");
        assert_eq!(file.coordinator.as_deref(), Some("http://127.0.0.1:7420"));
        assert_eq!(file.slots, Some(2));
        assert!(!file.labels.is_empty());
        let path = example();
        let c = agent_config(args(&["--config", path.to_str().expect("utf8")])).expect("config");
        let services = &c.policy.networks[0];
        assert_eq!(
            (services.name.as_str(), services.docker_network.as_str()),
            ("services", "kiln-services")
        );
        assert!(!services.internal);
        assert_eq!(services.subnet, "10.213.0.0/24");
        assert_eq!(services.projects, ["web-app", "api"]);
        assert!(c.policy.networks[1].internal);
        assert_eq!(c.policy.privileged, ["docker-images"]);
        assert_eq!(c.policy.host_paths[0].path, "/var/cache/kiln-shared");
        assert_eq!(c.pids_limit, 4096);
    }

    #[test]
    fn bad_networks_and_sandboxes_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("w.toml");
        let refused = |text: &str| {
            std::fs::write(&file, text).expect("write");
            let e = agent_config(args(&["--config", file.to_str().expect("utf8")]))
                .expect_err("refused");
            format!("{e:#}")
        };
        let e = refused("[[networks]]\nname = \"db\"\n");
        assert!(e.contains("`projects` is empty"), "{e}");
        let e = refused("[[networks]]\nname = \"a b\"\nprojects = [\"*\"]\n");
        assert!(e.contains("names are letters"), "{e}");
        let e = refused(
            "[[networks]]\nname = \"db\"\nprojects = [\"*\"]\n[[networks]]\nname = \"db\"\nprojects = [\"*\"]\n",
        );
        assert!(e.contains("defined twice"), "{e}");
        let e = refused("[[networks]]\nname = \"db\"\nsubnet = \"10.0.0.1\"\nprojects = [\"*\"]\n");
        assert!(e.contains("not CIDR"), "{e}");
        let e = refused("[[sandbox.host_paths]]\npath = \"/srv/../etc\"\nprojects = [\"*\"]\n");
        assert!(e.contains("absolute path"), "{e}");
        let e = refused("[sandbox]\npids_limit = 2\n");
        assert!(e.contains("at least 16"), "{e}");
        let e = refused("[sandbox]\nprivileged = true\n");
        assert!(e.contains("privileged"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let config = example();
        let config = config.to_str().expect("utf8");
        let c = agent_config(args(&[
            "--config",
            config,
            "--slots",
            "5",
            "--label",
            "pool=fast",
            "--id",
            "w9",
            "--coordinator",
            "http://c:1",
        ]))
        .expect("config");
        assert_eq!(c.slots, 5);
        assert_eq!(c.worker_id, "w9");
        assert_eq!(c.coordinator, "http://c:1");
        assert_eq!(c.labels.get("pool").map(String::as_str), Some("fast"));
        assert!(c.labels.len() > 1, "the file's other labels stay");
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("w.toml");
        std::fs::write(&file, "slot = 3\n").expect("write");
        let e = agent_config(args(&["--config", file.to_str().expect("utf8")]))
            .expect_err("unknown key");
        assert!(format!("{e:#}").contains("unknown field `slot`"), "{e:#}");
        assert!(agent_config(args(&["--slots", "0"])).is_err());
        assert!(agent_config(args(&["--coordinator", "127.0.0.1:7420"])).is_err());
        assert!(Cli::try_parse_from(["kiln", "--label", "novalue"]).is_err());
    }
}
