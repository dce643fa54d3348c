//! `kiln run [DIR]`: runs a checkout's buildspec locally in Docker and prints the build record.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_buildspec::routing::Status;
use kiln_worker::artifacts::{ArtifactTarget, Packaging};
use kiln_worker::docker::{ComputeType, Engine};
use kiln_worker::secrets::SecretStore;
use kiln_worker::BuildJob;
use tokio_util::sync::CancellationToken;

use crate::args::{parse_duration, parse_size, parse_variable};
use crate::host;
use crate::terminal::TerminalSink;

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

pub fn run(args: RunArgs) -> ExitCode {
    let job = match prepare(&args) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("kiln run: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln run: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(job, args.json)) {
        Ok(Status::Succeeded) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kiln run: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Everything that can be checked before anything runs; an error here exits 2.
fn prepare(args: &RunArgs) -> anyhow::Result<BuildJob> {
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
    let mut limits = args.compute.limits();
    if let Some(cpus) = args.cpus {
        if cpus.is_nan() || cpus <= 0.0 {
            bail!("--cpus must be positive");
        }
        limits.cpus = cpus;
    }
    if let Some(memory) = args.memory {
        limits.memory_bytes = memory;
    }
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let mut job = BuildJob::new(&project, parsed.buildspec, dir.clone(), &image);
    job.buildspec_location = spec_path.display().to_string();
    job.compute = args.compute;
    job.limits = limits;
    job.env_overrides = args.env.clone();
    job.secrets = secrets;
    job.timeout = args.timeout;
    job.initiator = std::env::var("USER").unwrap_or_else(|_| "kiln".to_string());
    job.resolved_source_version = git(&dir, &["rev-parse", "HEAD"]);
    job.source_version = job.resolved_source_version.clone();
    job.source_repo_url = git(&dir, &["config", "--get", "remote.origin.url"])
        .or_else(|| Some(format!("file://{}", dir.display())));
    job.artifacts = ArtifactTarget {
        out_dir: args.artifacts.clone(),
        packaging: args.packaging,
    };
    job.build_number = host::next_build_number(&project);
    Ok(job)
}

async fn execute(job: BuildJob, json: bool) -> anyhow::Result<Status> {
    let engine = Engine::connect().await?;
    // Leftovers of killed kiln processes are removed while this build runs: they are other
    // builds' objects, so nothing here waits for them.
    let reaper = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.reap_orphans(&host::hostname(), host::is_alive).await })
    };
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signal(cancel.clone()));
    let sink = Box::new(TerminalSink::new(json));
    let record = kiln_worker::run_build(engine, job, sink, cancel, &host::owner()).await;
    match reaper.await {
        Ok(Ok(0)) => {}
        Ok(Ok(reaped)) => tracing::info!(reaped, "removed objects left by earlier kiln processes"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not remove objects left by earlier kiln processes")
        }
        Err(e) => tracing::warn!(error = %e, "the reaper task failed"),
    }
    if json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        // A phase that failed and then passed on a retry is no problem of the build's.
        let succeeded = record.build_status == Status::Succeeded;
        let problems: Vec<String> = record
            .phases
            .iter()
            .filter(|p| !succeeded && p.phase_status != Some(Status::Succeeded))
            .map(|p| {
                let message = p.contexts.first().map_or("", |c| c.message.as_str());
                format!("{}: {message}", p.phase_type.as_str())
            })
            .collect();
        let detail = match problems.is_empty() {
            true => String::new(),
            false => format!(" ({})", problems.join("; ")),
        };
        eprintln!(
            "build {} {}{detail}",
            record.id,
            record.build_status.as_str()
        );
    }
    Ok(record.build_status)
}

/// First Ctrl-C (or SIGTERM) stops the build cleanly; a second one exits at once, and the next
/// `kiln run` reaps what was left.
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("kiln run: stopping the build (press Ctrl-C again to exit at once)");
    cancel.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
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
