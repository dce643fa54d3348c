//! `kiln run [DIR]`: runs a checkout's buildspec locally in Docker and prints the build record.
//!
//! There is one execution path. `kiln run` starts, in its own process, a coordinator (loopback,
//! a free port, no tokens) and a worker agent connected to it over gRPC, as `kiln server` does,
//! and then is their client with the code of `kiln start --follow` and `kiln artifacts`: it
//! uploads DIR, starts the build, prints the log as it comes, and downloads and extracts the
//! artifacts into OUT. Only what must be checked before anything runs (exit 2) happens here.
//!
//! Decisions:
//! - The coordinator's store is an embedded store in `<state dir>/run` (see [`crate::host`]), so
//!   build numbers keep increasing from run to run; the builds' records stay there, their logs are
//!   removed after each run (nobody can read them once the coordinator is gone). The embedded
//!   store is locked while open: when another `kiln run` has it, this one uses a temporary store
//!   (its numbers start at 1) and says so in one line.
//! - Sources and artifacts go through a temporary data directory, removed at the end.
//! - The agent resolves `--secret` and `--secrets-file` values (its secret store), and reaps the
//!   Docker objects dead Kiln processes left, before it drains at the end.
//! - The first Ctrl-C (or SIGTERM) stops the build with `StopBuild`; a second exits 130 at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_buildspec::archive::{check_entry, ArchiveEntry};
use kiln_coordinator::store::{EmbeddedStore, StoreError};
use kiln_coordinator::{Coordinator, CoordinatorConfig};
use kiln_proto::v1::start_build_request::ProjectRef;
use kiln_proto::v1::{
    Build, Project, ProjectArtifacts, ProjectSource, StartBuildRequest, StopBuildRequest,
};
use kiln_worker::agent::{run_agent, AgentConfig};
use kiln_worker::artifacts::Packaging;
use kiln_worker::docker::{ComputeType, Engine};
use kiln_worker::secrets::SecretStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::args::{parse_duration, parse_size, parse_variable};
use crate::client::{self, Failure, Server};
use crate::host;
use crate::signals::StopSignals;
use crate::terminal::PhaseHeaders;

/// The image `kiln run` uses without `-i`; `deploy/build-image.sh` builds it without a registry.
pub const DEFAULT_IMAGE: &str = "kiln/build-image:bookworm";

#[derive(clap::Args)]
pub struct RunArgs {
    /// The checkout to build (copied into the container; never written to)
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Buildspec file, relative to DIR (default: buildspec.yml)
    #[arg(short = 'b', long = "buildspec")]
    buildspec: Option<PathBuf>,
    /// Build image (default: kiln/build-image:bookworm, made by deploy/build-image.sh)
    #[arg(short = 'i', long = "image", env = "KILN_IMAGE")]
    image: Option<String>,
    /// Environment variable override, NAME=VALUE (highest precedence)
    #[arg(short = 'e', long = "env", value_parser = parse_variable)]
    env: Vec<(String, String)>,
    /// A secret for parameter-store names and secrets-manager ids: ID=VALUE
    #[arg(long = "secret")]
    secret: Vec<String>,
    /// A file of secrets: ID=VALUE lines, or a JSON object
    #[arg(long = "secrets-file")]
    secrets_file: Option<PathBuf>,
    /// Write artifacts under OUT (OUT/primary/, OUT/secondary/<id>/)
    #[arg(short = 'a', long = "artifacts")]
    artifacts: Option<PathBuf>,
    /// Artifact packaging: NONE (a tree) or ZIP
    #[arg(long, default_value = "NONE")]
    packaging: Packaging,
    /// Build timeout, like 90s, 20m or 2h
    #[arg(long, value_parser = parse_duration, default_value = "60m")]
    timeout: Duration,
    /// Compute type: SMALL (2 CPU, 3 GiB), MEDIUM (4, 7 GiB) or LARGE (8, 15 GiB)
    #[arg(long, default_value = "SMALL")]
    compute: ComputeType,
    /// Override the compute type's CPUs
    #[arg(long)]
    cpus: Option<f64>,
    /// Override the compute type's memory, like 512m or 4g
    #[arg(long, value_parser = parse_size)]
    memory: Option<i64>,
    /// Project name (default: the directory's name)
    #[arg(long)]
    project: Option<String>,
    /// Print the build record as JSON on stdout (the log goes to stderr)
    #[arg(long)]
    json: bool,
}

/// A checked `kiln run`: the build to start and what the local worker needs for it.
struct Prepared {
    dir: PathBuf,
    request: StartBuildRequest,
    secrets: SecretStore,
    out: Option<PathBuf>,
    json: bool,
}

pub fn run(args: RunArgs) -> ExitCode {
    let prepared = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("kiln run: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The agent's log sinks block with `block_in_place`, which needs the multi-thread runtime.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln run: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(execute(prepared));
    // Closes the store, so that its logs can go.
    drop(runtime);
    if let Some(dir) = store_dir() {
        match EmbeddedStore::remove_logs(&dir) {
            Ok(()) => {}
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!(error = %e, "could not remove the logs of kiln run's builds"),
        }
    }
    result.unwrap_or_else(|failure| failure.exit("run"))
}

/// Everything that can be checked before anything runs; an error here exits 2.
fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("source directory {}", args.dir.display()))?;
    if !dir.is_dir() {
        bail!("source directory {}: not a directory", dir.display());
    }
    let spec_path = match &args.buildspec {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => dir.join(p),
        None => dir.join("buildspec.yml"),
    };
    if !spec_path.is_file() {
        bail!(
            "no buildspec at {}: add a buildspec.yml to the directory or name one with -b",
            spec_path.display()
        );
    }
    let parsed = kiln_buildspec::parse_file(&spec_path)
        .map_err(|errors| anyhow::anyhow!("invalid buildspec (nothing ran):\n{errors}"))?;
    for warning in &parsed.warnings {
        eprintln!("{warning}");
    }
    if parsed.buildspec.batch.is_some() && parsed.buildspec.phases.is_empty() {
        bail!(
            "{}: batch builds are not supported yet; run each buildspec the batch names with -b",
            spec_path.display()
        );
    }
    // The default buildspec is read from the uploaded source; another one is sent as text.
    let buildspec_override = match &args.buildspec {
        Some(_) => std::fs::read_to_string(&spec_path)
            .with_context(|| format!("buildspec {}", spec_path.display()))?,
        None => String::new(),
    };
    let project = match &args.project {
        Some(p) => valid_project(p)?,
        None => project_from_dir(&dir),
    };
    let mut secrets = SecretStore::default();
    for s in &args.secret {
        secrets.add_argument(s)?;
    }
    if let Some(file) = &args.secrets_file {
        secrets.load_file(file)?;
    }
    if let Some(out) = &args.artifacts {
        if out.exists() && !out.is_dir() {
            bail!(
                "artifact directory {}: exists and is not a directory",
                out.display()
            );
        }
    }
    if let Some(cpus) = args.cpus {
        if cpus.is_nan() || cpus <= 0.0 {
            bail!("--cpus must be positive");
        }
    }
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let source_version = git(&dir, &["rev-parse", "HEAD"]);
    let source_repo_url = git(&dir, &["config", "--get", "remote.origin.url"])
        .unwrap_or_else(|| format!("file://{}", dir.display()));
    let request = StartBuildRequest {
        project_ref: Some(ProjectRef::InlineProject(Project {
            name: project,
            source: Some(ProjectSource {
                r#type: "NO_SOURCE".to_string(),
                ..Default::default()
            }),
            artifacts: Some(ProjectArtifacts {
                packaging: args.packaging.as_str().to_string(),
            }),
            ..Default::default()
        })),
        buildspec_override,
        buildspec_path: client::relative_buildspec(args.buildspec.as_deref()),
        environment_variables_override: client::plaintext(&args.env),
        image_override: image,
        compute_type_override: args.compute.codebuild_name().to_string(),
        // Whole seconds, rounded up; the coordinator refuses more than its limit (36 hours).
        timeout_in_seconds_override: u32::try_from(args.timeout.as_millis().div_ceil(1000))
            .unwrap_or(u32::MAX),
        cpus_override: args.cpus.unwrap_or_default(),
        memory_bytes_override: args.memory.map_or(0, i64::unsigned_abs),
        initiator: client::initiator(),
        source_version: source_version.unwrap_or_default(),
        source_repo_url,
        ..Default::default()
    };
    Ok(Prepared {
        dir,
        request,
        secrets,
        out: args.artifacts.clone(),
        json: args.json,
    })
}

/// Where `kiln run` keeps its coordinator's state.
fn store_dir() -> Option<PathBuf> {
    host::state_dir().map(|d| d.join("run"))
}

async fn execute(p: Prepared) -> Result<ExitCode, Failure> {
    let failed = |e: anyhow::Error| Failure::failed(format!("{e:#}"));
    // Registered first: from here on a Ctrl-C stops the build rather than the process.
    let signals = StopSignals::register();
    let data = tempfile::Builder::new()
        .prefix("kiln-run-")
        .tempdir()
        .map_err(|e| Failure::failed(format!("cannot make a temporary directory: {e}")))?;
    let engine = Engine::connect().await.map_err(|e| failed(e.into()))?;
    let coordinator = bind(data.path()).await.map_err(failed)?;
    let addr = coordinator.local_addr().map_err(|e| failed(e.into()))?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(coordinator.serve(stop.clone()));
    let drain = CancellationToken::new();
    let agent = tokio::spawn(run_agent(
        agent_config(addr, p.secrets),
        engine,
        drain.clone(),
    ));

    let server = Arc::new(Server::local(addr).await?);
    let (build_tx, build_rx) = watch::channel(None);
    if let Some(signals) = signals {
        tokio::spawn(stop_on_signal(signals, server.clone(), build_rx));
    }
    let build = client::submit(&server, p.request, &p.dir).await?;
    let _ = build_tx.send(Some(build.id.clone()));
    let mut log = PhaseHeaders::new(p.json);
    let followed = client::follow(&server, &build.id, &mut log).await;
    let _ = log.finish();
    let mut build = followed?;
    match &p.out {
        Some(out) if !build.artifacts_digest.is_empty() => {
            clear_artifacts(&build, out).map_err(failed)?;
            client::download(&server, &build.id, out).await?;
            locate_artifacts(&mut build, Some(out));
        }
        out => locate_artifacts(&mut build, out.as_deref()),
    }
    let code = client::finish(&build, p.json);

    drain.cancel();
    match agent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the local worker failed"),
        Err(e) => tracing::warn!(error = %e, "the local worker task failed"),
    }
    stop.cancel();
    match serving.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the local coordinator failed"),
        Err(e) => tracing::warn!(error = %e, "the local coordinator task failed"),
    }
    Ok(code)
}

/// The coordinator on a free loopback port, with the store in [`store_dir`], or in `data` when
/// that one cannot be had (another `kiln run` holds it, no state directory).
async fn bind(data: &Path) -> anyhow::Result<Coordinator> {
    let config = |state: &Path| {
        let mut config = CoordinatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: state.display().to_string(),
            data_dir: data.to_path_buf(),
            // The checkout is the user's own: no size limit.
            max_upload_bytes: u64::MAX,
            ..CoordinatorConfig::default()
        };
        // Blobs (build caches among them) stay beside the state that indexes them.
        config.store.path = Some(state.with_file_name(match state.file_name() {
            Some(name) => format!("{}-blobs", name.to_string_lossy()),
            None => "blobs".to_string(),
        }));
        config
    };
    if let Some(dir) = store_dir() {
        match Coordinator::bind(config(&dir)).await {
            Ok(coordinator) => return Ok(coordinator),
            Err(e) => match e.downcast_ref::<StoreError>() {
                Some(StoreError::Io(io)) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    eprintln!(
                        "kiln run: another kiln run is using {}; this build is numbered from 1",
                        dir.display()
                    )
                }
                Some(_) => eprintln!("kiln run: {e:#}; this build is numbered from 1"),
                None => return Err(e),
            },
        }
    }
    Coordinator::bind(config(&data.join("state"))).await
}

/// The local worker: one build at a time, the secrets of the command line.
fn agent_config(addr: SocketAddr, secrets: SecretStore) -> AgentConfig {
    AgentConfig {
        coordinator: format!("http://{addr}"),
        join_token: None,
        worker_id: host::hostname(),
        labels: Default::default(),
        slots: 1,
        default_image: DEFAULT_IMAGE.to_string(),
        secrets,
        owner: host::owner(),
        policy: Default::default(),
        pids_limit: kiln_worker::docker::convert::DEFAULT_PIDS,
    }
}

/// Removes the artifacts of an earlier build at the places this build's go, so that OUT holds
/// only this build's files there (extraction merges into what exists).
fn clear_artifacts(build: &Build, out: &Path) -> anyhow::Result<()> {
    for artifact in build.artifacts.iter().chain(&build.secondary_artifacts) {
        let relative = check_entry(&artifact.location, ArchiveEntry::Dir)?;
        if relative.is_empty() {
            continue;
        }
        let path = out.join(relative);
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => Ok(()),
        };
        removed.with_context(|| format!("cannot replace {}", path.display()))?;
    }
    Ok(())
}

/// Artifact locations as paths under OUT; without `-a` nothing was written, so none.
fn locate_artifacts(build: &mut Build, out: Option<&Path>) {
    for artifact in build
        .artifacts
        .iter_mut()
        .chain(&mut build.secondary_artifacts)
    {
        artifact.location = match out {
            Some(out) => out.join(&artifact.location).display().to_string(),
            None => String::new(),
        };
    }
}

/// First Ctrl-C (or SIGTERM) stops the build cleanly; a second one exits at once, and the next
/// `kiln run` reaps what was left.
async fn stop_on_signal(
    mut signals: StopSignals,
    server: Arc<Server>,
    mut build: watch::Receiver<Option<String>>,
) {
    signals.next().await;
    eprintln!("kiln run: stopping the build (press Ctrl-C again to exit at once)");
    let stopped = async {
        // A build not started yet is stopped as soon as it is.
        let id = match build.wait_for(Option::is_some).await {
            Ok(id) => id.clone().unwrap_or_default(),
            Err(_) => return,
        };
        let request = StopBuildRequest { id };
        if let Err(status) = server.client().stop_build(request).await {
            tracing::info!(error = %status, "could not stop the build");
        }
    };
    tokio::select! {
        () = signals.next() => {}
        () = stopped => signals.next().await,
    }
    std::process::exit(130);
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// CodeBuild project names: letters, digits, `-` and `_`, 2 to 255 characters.
pub(crate) fn valid_project(name: &str) -> anyhow::Result<String> {
    let ok = (2..=255).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("invalid project name {name:?}: use 2-255 letters, digits, - or _, starting with a letter or digit");
    }
    Ok(name.to_string())
}

pub(crate) fn project_from_dir(dir: &Path) -> String {
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches(['-', '_']).to_string();
    if name.len() < 2 {
        "local".to_string()
    } else {
        name.chars().take(255).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        assert_eq!(project_from_dir(Path::new("/x/my app")), "my-app");
        assert_eq!(project_from_dir(Path::new("/")), "local");
        assert!(valid_project("ok-name_1").is_ok());
        assert!(valid_project("-bad").is_err());
        assert!(valid_project("a").is_err());
    }
}
