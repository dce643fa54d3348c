//! The phase runner: one build from PROVISIONING to COMPLETED, as semantics §2–§5 describe.
//!
//! The runner owns the build's Docker objects for its whole life: whatever happens (failure,
//! timeout, stop, a panic in the runner), [`run_build`] removes the container and network before it
//! returns. Routing between phases is the pure state machine of `kiln_buildspec::routing`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use kiln_buildspec::routing::{final_status, route, PhaseType, Route, Status};
use kiln_buildspec::CommandPhase;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::artifacts;
use crate::docker::{BuildResources, Engine, EngineError};
use crate::job::BuildJob;
use crate::log::{BuildLog, LogSink};
use crate::mask::Masker;
use crate::record::{
    BuildEnvironment, BuildPhase, BuildRecord, EnvironmentVariable, PhaseContext, Timestamp,
};
use crate::shell::{initial_file, StateOp, STATE_DIR};
use crate::source::{archive_dir, ExtraEntry, SRC_DIR};

mod cache;
mod item;

/// Runs a build to completion and returns its record. `owner` labels the Docker objects (see
/// `docker::convert::process_owner`); cancelling `cancel` stops the build (STOPPED).
pub async fn run_build(
    engine: Engine,
    job: BuildJob,
    sink: Box<dyn LogSink>,
    cancel: CancellationToken,
    owner: &str,
) -> BuildRecord {
    let build_id = job.build_id.clone();
    // The uuid part of the id (after the project), as CodeBuild's variables use it.
    let uuid = build_id
        .rsplit_once(':')
        .map_or(build_id.as_str(), |(_, uuid)| uuid)
        .to_string();
    // Each run gets its own objects: a build re-run after a lost worker may land on the same host
    // while the first run's objects are still there.
    let run = Uuid::new_v4().to_string();
    let resources = BuildResources::new(&build_id, &run, &job.project, owner);
    let record = initial_record(&job, &build_id);
    let build = Build::new(
        engine.clone(),
        job,
        sink,
        cancel,
        resources.clone(),
        record.clone(),
        &uuid,
    );
    // A separate task, so a panic in the runner still reaches the teardown below.
    let outcome = tokio::spawn(build.run()).await;
    if let Err(e) = engine.teardown(&resources).await {
        tracing::warn!(error = %e, build_id = resources.build_id, "teardown after the build failed");
    }
    outcome.unwrap_or_else(|panic| {
        tracing::error!(error = %panic, "the phase runner panicked");
        let mut record = record;
        record.build_status = Status::Fault;
        record.current_phase = PhaseType::Completed;
        record.build_complete = true;
        record.end_time = Some(Timestamp::now());
        record
    })
}

/// How a phase ended.
struct Outcome {
    status: Status,
    context: Option<PhaseContext>,
}

impl Outcome {
    fn ok() -> Outcome {
        Outcome {
            status: Status::Succeeded,
            context: None,
        }
    }

    fn with(status: Status, code: &str, message: impl Into<String>) -> Outcome {
        Outcome {
            status,
            context: Some(PhaseContext {
                status_code: code.to_string(),
                message: message.into(),
            }),
        }
    }

    fn fault(e: &EngineError) -> Outcome {
        Outcome::with(Status::Fault, "INTERNAL_ERROR", e.to_string())
    }
}

/// Why a phase was cut short.
enum Interrupt {
    Timeout,
    Stop,
}

struct Build {
    engine: Engine,
    job: BuildJob,
    log: BuildLog,
    record: BuildRecord,
    resources: BuildResources,
    /// Kiln's variables for the first item (without the image's and the secrets).
    initial: BTreeMap<String, String>,
    /// The image's own environment, from PROVISIONING.
    image_env: Vec<(String, String)>,
    /// `CODEBUILD_BUILD_SUCCEEDING`.
    succeeding: bool,
    /// What the next 0.2 item does to the carried state first (RETRY snapshots).
    state_op: StateOp,
    /// The container's OOM kill count when last read.
    oom_kills_seen: u64,
    /// Output streams of finished items still held open by their background processes.
    background: futures_util::stream::SelectAll<item::BackgroundLines>,
    marker: String,
    secret_vars: BTreeSet<String>,
    /// Evaluated in DOWNLOAD_SOURCE for the save after POST_BUILD.
    cache_keys: Option<cache::CacheKeys>,
    cancel: CancellationToken,
    deadline: Instant,
}

pub(crate) fn initial_record(job: &BuildJob, build_id: &str) -> BuildRecord {
    let now = Timestamp::now();
    let instant = |phase| BuildPhase {
        phase_type: phase,
        phase_status: Some(Status::Succeeded),
        start_time: now,
        end_time: Some(now),
        duration_in_seconds: Some(0),
        contexts: Vec::new(),
    };
    let plaintext = |(name, value): &(String, String)| EnvironmentVariable {
        name: name.clone(),
        value: value.clone(),
        kind: "PLAINTEXT".to_string(),
    };
    BuildRecord {
        id: build_id.to_string(),
        arn: build_arn(job, build_id),
        build_number: job.build_number,
        project_name: job.project.clone(),
        build_status: Status::InProgress,
        current_phase: PhaseType::Submitted,
        build_complete: false,
        initiator: job.initiator.clone(),
        start_time: now,
        end_time: None,
        timeout_in_minutes: job.timeout.as_secs().div_ceil(60),
        source_version: job.source_version.clone(),
        resolved_source_version: job.resolved_source_version.clone(),
        phases: vec![instant(PhaseType::Submitted), instant(PhaseType::Queued)],
        environment: BuildEnvironment {
            kind: "LINUX_CONTAINER".to_string(),
            image: job.image.clone(),
            compute_type: job.compute.codebuild_name().to_string(),
            environment_variables: job
                .project_env
                .iter()
                .chain(&job.env_overrides)
                .map(plaintext)
                .collect(),
        },
        exported_environment_variables: Vec::new(),
        artifacts: None,
        secondary_artifacts: Vec::new(),
        network_interfaces: Vec::new(),
    }
}

fn build_arn(job: &BuildJob, build_id: &str) -> String {
    format!(
        "arn:kiln:codebuild:{}:{}:build/{build_id}",
        job.region, job.account
    )
}

/// The variables the first item starts with, lowest precedence first: Kiln's defaults, the
/// buildspec's `env.variables`, the project's, the client's overrides, then the reserved
/// `CODEBUILD_*` variables that only Kiln sets. The image's environment goes below all of them and
/// secrets are added in DOWNLOAD_SOURCE.
fn initial_vars(
    job: &BuildJob,
    build_id: &str,
    uuid: &str,
    start: Timestamp,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("HOME", "/root"),
        ("AWS_REGION", job.region.as_str()),
        ("AWS_DEFAULT_REGION", job.region.as_str()),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    for (k, v) in job
        .buildspec
        .env
        .variables
        .iter()
        .chain(&job.project_env)
        .chain(&job.env_overrides)
    {
        env.insert(k.clone(), v.clone());
    }
    let project_arn = format!(
        "arn:kiln:codebuild:{}:{}:project/{}",
        job.region, job.account, job.project
    );
    let reserved = [
        ("CODEBUILD_BUILD_ID", build_id.to_string()),
        ("CODEBUILD_BUILD_NUMBER", job.build_number.to_string()),
        ("CODEBUILD_BUILD_ARN", build_arn(job, build_id)),
        ("CODEBUILD_BUILD_IMAGE", job.image.clone()),
        ("CODEBUILD_INITIATOR", job.initiator.clone()),
        ("CODEBUILD_SRC_DIR", SRC_DIR.to_string()),
        (
            "CODEBUILD_SOURCE_VERSION",
            job.source_version.clone().unwrap_or_default(),
        ),
        (
            "CODEBUILD_SOURCE_REPO_URL",
            job.source_repo_url.clone().unwrap_or_default(),
        ),
        ("CODEBUILD_START_TIME", start.epoch_millis().to_string()),
        ("CODEBUILD_PROJECT_ARN", project_arn),
        ("CODEBUILD_LOG_PATH", uuid.to_string()),
        ("CODEBUILD_CI", "true".to_string()),
    ];
    for (k, v) in reserved {
        env.insert(k.to_string(), v);
    }
    if let Some(commit) = &job.resolved_source_version {
        env.insert("CODEBUILD_RESOLVED_SOURCE_VERSION".into(), commit.clone());
    }
    env
}

impl Build {
    fn new(
        engine: Engine,
        job: BuildJob,
        sink: Box<dyn LogSink>,
        cancel: CancellationToken,
        resources: BuildResources,
        record: BuildRecord,
        uuid: &str,
    ) -> Build {
        let initial = initial_vars(&job, &record.id, uuid, record.start_time);
        let deadline = Instant::now() + job.timeout;
        Build {
            engine,
            log: BuildLog::new(Masker::none(), sink),
            record,
            resources,
            initial,
            image_env: Vec::new(),
            succeeding: true,
            state_op: StateOp::None,
            oom_kills_seen: 0,
            background: Default::default(),
            marker: format!("KILN-END-{}", Uuid::new_v4().simple()),
            secret_vars: BTreeSet::new(),
            cache_keys: None,
            cancel,
            deadline,
            job,
        }
    }

    async fn run(mut self) -> BuildRecord {
        let mut phase = PhaseType::Provisioning;
        let mut retries = 0;
        // Attempts that a RETRY superseded do not count toward the final status.
        let mut superseded = BTreeSet::new();
        while phase != PhaseType::Completed {
            self.record.begin_phase(phase);
            self.log.phase(phase);
            self.log
                .agent(&format!("Entering phase {}", phase.as_str()));
            if let Some(kiln_buildspec::OnFailure::Retry { .. }) = self.on_failure(phase) {
                // A retry starts again from the state the phase first started with.
                self.state_op = match retries {
                    0 => StateOp::Snapshot,
                    _ => StateOp::Restore,
                };
            }
            let outcome = self.run_phase(phase).await;
            let (code, message) = outcome
                .context
                .as_ref()
                .map(|c| (c.status_code.as_str(), c.message.as_str()))
                .unwrap_or(("", ""));
            // Taken before the closing lines, so a RETRY regex sees only what the phase printed.
            let failure_message = format!("{message}\n{}", self.log.phase_tail());
            self.log.agent(&format!(
                "Phase complete: {} State: {}",
                phase.as_str(),
                outcome.status.as_str()
            ));
            self.log.agent(&format!(
                "Phase context status code: {code} Message: {message}"
            ));
            let on_failure = self.on_failure(phase).cloned();
            let on_failure = on_failure.as_ref();
            let next = route(phase, outcome.status, on_failure, retries, &failure_message);
            let context = outcome.context.map(|c| PhaseContext {
                message: self.log.mask(&c.message),
                ..c
            });
            self.record.end_phase(outcome.status, context);
            match next {
                Route::Retry => {
                    superseded.insert(self.record.phases.len() - 1);
                    retries += 1;
                    self.log.agent(&format!(
                        "Retrying phase {} ({retries} of {})",
                        phase.as_str(),
                        retry_count(on_failure)
                    ));
                }
                Route::Goto(next) => {
                    self.state_op = StateOp::None;
                    if outcome.status != Status::Succeeded {
                        self.succeeding = false;
                    }
                    let interrupted = matches!(outcome.status, Status::TimedOut | Status::Stopped);
                    // Exported values are taken when the last command phase that runs is over.
                    if phase.command_phase().is_some()
                        && next.command_phase().is_none()
                        && !interrupted
                    {
                        let (cancel, deadline) = (self.cancel.clone(), self.deadline);
                        let captured =
                            guarded(self.capture_exported_variables(), cancel, deadline).await;
                        if captured.is_err() {
                            self.log
                                .agent("Exported variables not recorded: the build ended first");
                        }
                    }
                    retries = 0;
                    phase = next;
                }
            }
        }
        self.log.end_output();
        let statuses = self
            .record
            .phases
            .iter()
            .enumerate()
            .filter(|(i, _)| !superseded.contains(i))
            .filter_map(|(_, p)| p.phase_status);
        self.record.build_status = final_status(statuses);
        self.record.current_phase = PhaseType::Completed;
        self.record.build_complete = true;
        self.record.end_time = Some(Timestamp::now());
        self.record
    }

    async fn run_phase(&mut self, phase: PhaseType) -> Outcome {
        match phase {
            // Never interrupted: this is where the build's resources go away.
            PhaseType::Finalizing => return self.finalize().await,
            // Interrupted only between Docker calls (see `provision`).
            PhaseType::Provisioning => return self.provision().await,
            _ => {}
        }
        let cancel = self.cancel.clone();
        let deadline = self.deadline;
        let interrupted = {
            let work = self.phase_work(phase);
            guarded(work, cancel, deadline).await
        };
        match interrupted {
            Ok(outcome) => outcome,
            Err(interrupt) => {
                self.log.end_output();
                if let Err(e) = self.engine.kill(&self.resources.container).await {
                    tracing::warn!(error = %e, "killing the build container failed");
                }
                self.interrupted(interrupt)
            }
        }
    }

    fn interrupted(&self, interrupt: Interrupt) -> Outcome {
        match interrupt {
            Interrupt::Timeout => Outcome::with(
                Status::TimedOut,
                "BUILD_TIMED_OUT",
                format!(
                    "Build has timed out after {} seconds",
                    self.job.timeout.as_secs()
                ),
            ),
            Interrupt::Stop => Outcome::with(Status::Stopped, "BUILD_STOPPED", "Build was stopped"),
        }
    }

    async fn phase_work(&mut self, phase: PhaseType) -> Outcome {
        match phase {
            PhaseType::DownloadSource => self.download_source().await,
            PhaseType::UploadArtifacts => self.upload_artifacts().await,
            other => match other.command_phase() {
                Some(p) => self.command_phase(p).await,
                None => Outcome::ok(),
            },
        }
    }

    async fn provision(&mut self) -> Outcome {
        let image = self.job.image.clone();
        self.log.agent(&format!("Using image {image}"));
        let sandbox = &self.job.sandbox;
        for (what, on) in [
            ("privileged mode", sandbox.privileged),
            ("the Docker socket", sandbox.docker_socket),
            ("the host network", sandbox.host_network),
        ] {
            if on {
                self.log.agent(&format!("Sandbox: the build gets {what}"));
            }
        }
        for m in &sandbox.mounts {
            let mode = if m.read_only {
                "read-only"
            } else {
                "read-write"
            };
            self.log.agent(&format!(
                "Sandbox: host path {} at {} ({mode})",
                m.host_path, m.container_path
            ));
        }
        // A Docker create cut off in flight could finish after the teardown swept, leaving its
        // object behind: a stop or the deadline is honoured between the engine's calls instead.
        let stop = self.cancel.child_token();
        let timer = tokio::spawn({
            let (stop, deadline) = (stop.clone(), self.deadline);
            async move {
                tokio::time::sleep_until(deadline).await;
                stop.cancel();
            }
        });
        let provisioned = self
            .engine
            .provision(&self.resources, &image, self.job.limits, sandbox, &stop)
            .await;
        timer.abort();
        match provisioned {
            Ok(provisioned) => {
                self.image_env = provisioned
                    .image_env
                    .iter()
                    .filter_map(|e| e.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                for i in provisioned
                    .interfaces
                    .iter()
                    .filter(|i| !i.network.is_empty())
                {
                    let aliases = match i.aliases.is_empty() {
                        true => String::new(),
                        false => format!(" as {}", i.aliases.join(", ")),
                    };
                    self.log.agent(&format!(
                        "Attached to network {} ({}) at {}{aliases}",
                        i.network, i.docker_network, i.ip_address
                    ));
                }
                self.record.network_interfaces = provisioned.interfaces;
                Outcome::ok()
            }
            Err(e @ EngineError::Image { .. }) => Outcome::with(
                Status::Failed,
                "BUILD_CONTAINER_UNABLE_TO_PULL_IMAGE",
                e.to_string(),
            ),
            Err(EngineError::Interrupted) => match self.cancel.is_cancelled() {
                true => self.interrupted(Interrupt::Stop),
                false => self.interrupted(Interrupt::Timeout),
            },
            Err(e) => Outcome::fault(&e),
        }
    }

    async fn download_source(&mut self) -> Outcome {
        self.log
            .agent(&format!("YAML location is {}", self.job.buildspec_location));
        let env = &self.job.buildspec.env;
        let resolved = match self
            .job
            .secrets
            .resolve(&env.parameter_store, &env.secrets_manager)
        {
            Ok(resolved) => resolved,
            Err(e) => return Outcome::with(Status::Failed, "CLIENT_ERROR", e.to_string()),
        };
        match Masker::new(resolved.iter().map(|s| s.value.as_str())) {
            Ok(masker) => self.log.set_masker(masker),
            Err(e) => return Outcome::with(Status::Fault, "INTERNAL_ERROR", e.to_string()),
        }
        // Secrets sit with the buildspec's variables: the project and the client override them.
        let overridden: BTreeSet<&String> = self
            .job
            .project_env
            .iter()
            .chain(&self.job.env_overrides)
            .map(|(k, _)| k)
            .collect();
        let secrets: Vec<_> = resolved
            .into_iter()
            .filter(|s| !overridden.contains(&s.var))
            .collect();
        self.secret_vars = secrets.iter().map(|s| s.var.clone()).collect();
        let vars = self
            .image_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(secrets.iter().map(|s| (s.var.as_str(), s.value.as_str())))
            .chain(self.initial.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let state = vec![
            ExtraEntry {
                path: "codebuild/output/tmp".into(),
                mode: 0o777,
                contents: None,
            },
            ExtraEntry {
                path: STATE_DIR.trim_start_matches('/').into(),
                mode: 0o777,
                contents: None,
            },
            ExtraEntry {
                path: format!("{}/initial", STATE_DIR.trim_start_matches('/')),
                mode: 0o644,
                contents: Some(initial_file(vars).into_bytes()),
            },
        ];
        let (tar, archiver) = archive_dir(&self.job.source_dir, state);
        let uploaded = self
            .engine
            .upload(&self.resources.container, "/", tar)
            .await;
        match (archiver.await, uploaded) {
            // The daemon stopped reading (the upload failed): Kiln's fault, not the source's.
            (Ok(Err(e)), Err(upload)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Outcome::fault(&upload)
            }
            (Ok(Err(e)), _) => {
                return Outcome::with(
                    Status::Failed,
                    "CLIENT_ERROR",
                    format!(
                        "cannot read the source directory {}: {e}",
                        self.job.source_dir.display()
                    ),
                )
            }
            (Err(e), _) => return Outcome::with(Status::Fault, "INTERNAL_ERROR", e.to_string()),
            (Ok(Ok(())), Err(e)) => return Outcome::fault(&e),
            (Ok(Ok(())), Ok(())) => {}
        }
        self.restore_cache().await;
        Outcome::ok()
    }

    async fn command_phase(&mut self, which: CommandPhase) -> Outcome {
        let Some(def) = self.job.buildspec.phase(which).cloned() else {
            return Outcome::ok();
        };
        if def.commands.is_empty() && def.finally.is_empty() {
            self.log.agent(&format!(
                "No commands found for phase name: {}",
                which.key()
            ));
        }
        for (runtime, version) in &def.runtime_versions {
            self.log.agent(&format!(
                "Runtime version {runtime}: {version} requested; Kiln uses the runtimes installed in the image"
            ));
        }
        let user = def.run_as.clone().or(self.job.buildspec.run_as.clone());
        let mut failure = None;
        for list in [&def.commands, &def.finally] {
            for command in list {
                match self.run_item(&command.text, user.as_deref()).await {
                    Ok(0) => {}
                    Ok(code) => {
                        self.log.agent(&format!(
                            "Command did not exit successfully {} exit status {code}",
                            command.text
                        ));
                        let reason = self.exit_reason(code).await;
                        failure.get_or_insert(Outcome::with(
                            Status::Failed,
                            "COMMAND_EXECUTION_ERROR",
                            format!(
                                "Error while executing command: {}. Reason: {reason}",
                                command.text
                            ),
                        ));
                        break;
                    }
                    Err(e) => return Outcome::fault(&e),
                }
            }
        }
        failure.unwrap_or_else(Outcome::ok)
    }

    /// `exit status N`, with the out-of-memory kill named when that is what happened: the
    /// container's OOM kill count went up since it was last looked at.
    async fn exit_reason(&mut self, code: i64) -> String {
        let kills = match code {
            137 => self.engine.oom_kills(&self.resources.container).await.ok(),
            _ => None,
        };
        let new_kill = kills.is_some_and(|k| k > self.oom_kills_seen);
        if let Some(k) = kills {
            self.oom_kills_seen = k;
        }
        if new_kill {
            return format!(
                "exit status {code} (out of memory: the build container is limited to {} MiB)",
                self.job.limits.memory_bytes >> 20
            );
        }
        format!("exit status {code}")
    }

    fn on_failure(&self, phase: PhaseType) -> Option<&kiln_buildspec::OnFailure> {
        phase
            .command_phase()
            .and_then(|p| self.job.buildspec.phase(p))
            .and_then(|p| p.on_failure.as_ref())
    }

    async fn upload_artifacts(&mut self) -> Outcome {
        self.save_cache().await;
        for (group, _) in &self.job.buildspec.reports {
            self.log.agent(&format!(
                "Report group {group}: test reports are not uploaded by this version of Kiln"
            ));
        }
        let Some(spec) = self.job.buildspec.artifacts.clone() else {
            return Outcome::ok();
        };
        let mut names = Vec::new();
        for definition in std::iter::once(&spec).chain(spec.secondary.iter().map(|(_, a)| a)) {
            let name = match &definition.name {
                Some(n) => match self.shell_evaluate(n).await {
                    Ok(v) => v,
                    Err(e) => return Outcome::fault(&e),
                },
                None => self.job.project.clone(),
            };
            names.push(name);
        }
        let tree = artifacts::Tree::of(&self.engine, &self.resources.container, SRC_DIR).await;
        match artifacts::collect(tree, &spec, &names, &self.job.artifacts).await {
            Ok(collected) => {
                for skipped in &collected.skipped {
                    self.log.agent(&format!(
                        "Skipping artifact path {}: {}",
                        skipped.path, skipped.reason
                    ));
                }
                for a in std::iter::once(&collected.primary).chain(&collected.secondary) {
                    // Where the worker staged the files means nothing to the build's readers.
                    self.log.agent(&format!(
                        "Artifact {}: {} files, {} bytes, sha256 {}",
                        a.artifact_identifier.as_deref().unwrap_or("primary"),
                        a.files.len(),
                        a.size_in_bytes,
                        a.sha256sum
                    ));
                }
                self.record.artifacts = Some(collected.primary);
                self.record.secondary_artifacts = collected.secondary;
                Outcome::ok()
            }
            Err(artifacts::ArtifactError::Engine(e)) => Outcome::fault(&e),
            Err(e) => Outcome::with(Status::Failed, "CLIENT_ERROR", e.to_string()),
        }
    }

    async fn finalize(&mut self) -> Outcome {
        self.log_background_output();
        match self.engine.teardown(&self.resources).await {
            Ok(()) => Outcome::ok(),
            Err(e) => Outcome::fault(&e),
        }
    }
}

fn retry_count(on_failure: Option<&kiln_buildspec::OnFailure>) -> u32 {
    match on_failure {
        Some(kiln_buildspec::OnFailure::Retry { count, .. }) => *count,
        _ => 0,
    }
}

/// Runs `work` unless the build is stopped or its deadline passes first.
async fn guarded<T>(
    work: impl Future<Output = T>,
    cancel: CancellationToken,
    deadline: Instant,
) -> Result<T, Interrupt> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Interrupt::Stop),
        _ = tokio::time::sleep_until(deadline) => Err(Interrupt::Timeout),
        out = work => Ok(out),
    }
}
