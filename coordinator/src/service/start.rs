//! StartBuild and RetryBuild: from a request to a numbered, queued build. Everything is checked
//! before anything is stored: the project, the source, the buildspec (an invalid one is refused
//! with INVALID_ARGUMENT and its `file:line:col` messages).

use kiln_proto::policy::Refusal;
use kiln_proto::v1::{
    assignment, start_build_request, Assignment, Build, BuildPhase, EnvironmentVariable, Project,
    StartBuildRequest, StoredBuild,
};
use tonic::Status;

use crate::archive;
use crate::core::{now_ms, store_error, Core};
use crate::store::{Created, StateStore};

const DEFAULT_TIMEOUT_MINUTES: u32 = 60;
const MAX_TIMEOUT_MINUTES: u32 = 2160;
const DEFAULT_QUEUED_TIMEOUT_MINUTES: u32 = 480;
const BUILDSPEC_FILE: &str = "buildspec.yml";

/// Checks and queues a build; returns it (or the build an earlier call with the same
/// idempotency token created).
pub async fn start<S: StateStore>(
    core: &Core<S>,
    request: StartBuildRequest,
    retry_of: Option<String>,
) -> Result<Build, Status> {
    let project = match request.project_ref.clone() {
        Some(start_build_request::ProjectRef::ProjectName(name)) => core
            .store
            .get_project(&name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no project {name:?}: create it with `kiln project apply -f FILE`"
                ))
            })?,
        Some(start_build_request::ProjectRef::InlineProject(p)) => {
            check_project(&p)?;
            // A stored project's limits and labels must not be sidestepped by its name.
            if retry_of.is_none()
                && core
                    .store
                    .get_project(&p.name)
                    .await
                    .map_err(store_error)?
                    .is_some()
            {
                return Err(Status::already_exists(format!(
                    "a project named {0:?} is stored: start it by name (`kiln start --project \
                     {0}`, or project_name in StartBuild), or give the inline project another name",
                    p.name
                )));
            }
            p
        }
        None => {
            return Err(Status::invalid_argument(
                "StartBuild needs a project: project_name or inline_project",
            ))
        }
    };
    let source_conf = project.source.clone().unwrap_or_default();
    let source = match request.source.clone() {
        Some(start_build_request::Source::SourceDigest(d)) => assignment::Source::SourceDigest(d),
        Some(start_build_request::Source::Git(mut g)) if !g.url.is_empty() => {
            if g.clone_depth == 0 {
                g.clone_depth = source_conf.git_clone_depth;
            }
            assignment::Source::Git(g)
        }
        Some(start_build_request::Source::Git(_)) => {
            return Err(Status::invalid_argument("git source without a url"))
        }
        None if source_conf.r#type == "GIT" && !source_conf.location.is_empty() => {
            assignment::Source::Git(kiln_proto::v1::GitSource {
                url: source_conf.location.clone(),
                revision: String::new(),
                clone_depth: source_conf.git_clone_depth,
            })
        }
        None => {
            return Err(Status::invalid_argument(
                "no source: upload one with UploadSource (`kiln start DIR`) or give a git url",
            ))
        }
    };
    let override_path = non_empty(&request.buildspec_path).unwrap_or(BUILDSPEC_FILE);
    let (buildspec, buildspec_path) = if !request.buildspec_override.is_empty() {
        (
            request.buildspec_override.clone(),
            override_path.to_string(),
        )
    } else if !source_conf.buildspec.is_empty() {
        (source_conf.buildspec.clone(), String::new())
    } else if let assignment::Source::SourceDigest(digest) = &source {
        let fetched = core.blobs.fetch(digest).await.map_err(|e| match e.code() {
            tonic::Code::NotFound => Status::not_found(format!(
                "no uploaded source {digest:?}: upload it with UploadSource first"
            )),
            _ => e,
        })?;
        let text =
            tokio::task::spawn_blocking(move || archive::read_file(fetched.path(), BUILDSPEC_FILE))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "no buildspec.yml at the root of the source: add one or pass a buildspec",
                    )
                })?;
        (text, BUILDSPEC_FILE.to_string())
    } else {
        // A git source's buildspec is read by the worker after the checkout.
        (String::new(), String::new())
    };
    if let assignment::Source::SourceDigest(digest) = &source {
        if !core.blobs.contains(digest).await? {
            return Err(Status::not_found(format!(
                "no uploaded source {digest:?}: upload it with UploadSource first"
            )));
        }
    }
    if !buildspec.is_empty() {
        let name = non_empty(&buildspec_path).unwrap_or("buildspec");
        let parsed = kiln_buildspec::parse(name, &buildspec).map_err(|errors| {
            Status::invalid_argument(format!("invalid buildspec (nothing was queued):\n{errors}"))
        })?;
        if parsed.buildspec.batch.is_some() && parsed.buildspec.phases.is_empty() {
            return Err(Status::invalid_argument(
                "batch builds are not supported yet: start each buildspec of the batch on its own",
            ));
        }
    }
    check_variables(&request.environment_variables_override)?;
    let env = project.environment.clone().unwrap_or_default();
    let timeout_seconds = request.timeout_in_seconds_override;
    let timeout = match timeout_seconds {
        0 => pick(
            request.timeout_in_minutes_override,
            project.timeout_in_minutes,
            DEFAULT_TIMEOUT_MINUTES,
        ),
        seconds => seconds.div_ceil(60),
    };
    if timeout > MAX_TIMEOUT_MINUTES {
        return Err(Status::invalid_argument(format!(
            "timeout of {timeout} minutes is over the limit of {MAX_TIMEOUT_MINUTES}"
        )));
    }
    let queued_timeout = pick(
        request.queued_timeout_in_minutes_override,
        project.queued_timeout_in_minutes,
        DEFAULT_QUEUED_TIMEOUT_MINUTES,
    );
    let cpus = request.cpus_override;
    if !cpus.is_finite() || cpus < 0.0 {
        return Err(Status::invalid_argument(
            "cpus_override must be a positive number of CPUs (or 0 for the compute type's)",
        ));
    }
    if i64::try_from(request.memory_bytes_override).is_err() {
        return Err(Status::invalid_argument(
            "memory_bytes_override is over the largest memory limit Docker takes",
        ));
    }
    if !(0..=100).contains(&request.priority) {
        return Err(Status::invalid_argument(
            "priority must be between 0 and 100",
        ));
    }
    let image = non_empty(&request.image_override)
        .unwrap_or(&env.image)
        .to_string();
    let compute = non_empty(&request.compute_type_override)
        .or(non_empty(&env.compute_type))
        .unwrap_or("BUILD_GENERAL1_SMALL")
        .to_string();
    let now = now_ms();
    let id = format!("{}:{}", project.name, uuid::Uuid::new_v4());
    let initiator = non_empty(&request.initiator).unwrap_or("kiln").to_string();
    // What the client knows of an uploaded source's origin; a git checkout tells the worker.
    let (git, digest, source_version, source_repo_url) = match &source {
        assignment::Source::Git(g) => (Some(g.clone()), String::new(), "", ""),
        assignment::Source::SourceDigest(d) => (
            None,
            d.clone(),
            request.source_version.as_str(),
            request.source_repo_url.as_str(),
        ),
    };
    let build = Build {
        arn: format!("arn:aws:codebuild:us-east-1:000000000000:build/{id}"),
        id: id.clone(),
        project_name: project.name.clone(),
        build_status: "QUEUED".to_string(),
        current_phase: "QUEUED".to_string(),
        initiator: initiator.clone(),
        queued_time_ms: now,
        start_time_ms: now,
        timeout_in_minutes: timeout,
        queued_timeout_in_minutes: queued_timeout,
        priority: request.priority,
        source_digest: digest,
        git,
        resolved_source_version: source_version.to_string(),
        image: image.clone(),
        compute_type: compute.clone(),
        phases: vec![
            BuildPhase {
                phase_type: "SUBMITTED".to_string(),
                phase_status: "SUCCEEDED".to_string(),
                start_time_ms: now,
                end_time_ms: now,
                ..BuildPhase::default()
            },
            BuildPhase {
                phase_type: "QUEUED".to_string(),
                start_time_ms: now,
                ..BuildPhase::default()
            },
        ],
        retry_of: retry_of.unwrap_or_default(),
        ..Build::default()
    };
    let spec = Assignment {
        build_id: id,
        project_name: project.name.clone(),
        buildspec,
        buildspec_path,
        source: Some(source),
        image,
        compute_type: compute,
        project_environment_variables: env.environment_variables.clone(),
        environment_variables_override: request.environment_variables_override.clone(),
        timeout_in_minutes: timeout,
        packaging: project
            .artifacts
            .as_ref()
            .map(|a| a.packaging.clone())
            .unwrap_or_default(),
        initiator,
        vpc: project.vpc.clone(),
        timeout_in_seconds: timeout_seconds,
        cpus,
        memory_bytes: request.memory_bytes_override,
        source_version: source_version.to_string(),
        source_repo_url: source_repo_url.to_string(),
        privileged_mode: env.privileged_mode,
        docker_socket: env.docker_socket,
        host_network: env.host_network,
        host_paths: env.host_paths.clone(),
        no_cache: project
            .cache
            .as_ref()
            .is_some_and(|c| c.r#type == "NO_CACHE"),
        ..Assignment::default()
    };
    let row = StoredBuild {
        build: Some(build),
        spec: Some(spec),
        worker_labels: env.worker_labels.clone(),
        concurrent_build_limit: project.concurrent_build_limit,
        queued_deadline_ms: now + i64::from(queued_timeout) * 60_000,
        ..StoredBuild::default()
    };
    if let Err(refusal) = crate::core::admission(core.workers().values(), &row) {
        let message =
            format!("no connected worker may run this build (nothing was queued): {refusal}");
        return Err(match refusal {
            Refusal::Denied(_) => Status::permission_denied(message),
            Refusal::Missing(_) => Status::failed_precondition(message),
        });
    }
    let token = non_empty(&request.idempotency_token).map(str::to_string);
    let stored = match core
        .store
        .create_build(row, token)
        .await
        .map_err(store_error)?
    {
        Created::New(row) => {
            core.changed();
            core.dispatch.notify_one();
            row
        }
        Created::Existing(row) => row,
    };
    Ok(stored.build.unwrap_or_default())
}

/// The request for a new build that repeats an earlier one.
pub fn retry_request(row: &StoredBuild, project: Project, token: String) -> StartBuildRequest {
    let spec = row.spec.clone().unwrap_or_default();
    let build = row.build.clone().unwrap_or_default();
    let source = match spec.source {
        Some(assignment::Source::Git(g)) => Some(start_build_request::Source::Git(g)),
        Some(assignment::Source::SourceDigest(d)) => {
            Some(start_build_request::Source::SourceDigest(d))
        }
        None => None,
    };
    StartBuildRequest {
        project_ref: Some(start_build_request::ProjectRef::InlineProject(project)),
        source,
        buildspec_override: spec.buildspec,
        buildspec_path: spec.buildspec_path,
        environment_variables_override: spec.environment_variables_override,
        image_override: spec.image,
        compute_type_override: spec.compute_type,
        timeout_in_minutes_override: spec.timeout_in_minutes,
        queued_timeout_in_minutes_override: build.queued_timeout_in_minutes,
        priority: build.priority,
        idempotency_token: token,
        initiator: build.initiator,
        timeout_in_seconds_override: spec.timeout_in_seconds,
        cpus_override: spec.cpus,
        memory_bytes_override: spec.memory_bytes,
        source_version: spec.source_version,
        source_repo_url: spec.source_repo_url,
    }
}

/// A project's settings as a build of it recorded them (for RetryBuild of inline projects).
pub fn project_of(row: &StoredBuild) -> Project {
    let spec = row.spec.clone().unwrap_or_default();
    Project {
        name: spec.project_name,
        environment: Some(kiln_proto::v1::ProjectEnvironment {
            environment_variables: spec.project_environment_variables,
            worker_labels: row.worker_labels.clone(),
            privileged_mode: spec.privileged_mode,
            docker_socket: spec.docker_socket,
            host_network: spec.host_network,
            host_paths: spec.host_paths,
            ..Default::default()
        }),
        artifacts: Some(kiln_proto::v1::ProjectArtifacts {
            packaging: spec.packaging,
        }),
        vpc: spec.vpc,
        cache: spec.no_cache.then(|| kiln_proto::v1::ProjectCache {
            r#type: "NO_CACHE".to_string(),
            location: String::new(),
        }),
        concurrent_build_limit: row.concurrent_build_limit,
        ..Project::default()
    }
}

/// Checks a project's name and settings.
pub fn check_project(project: &Project) -> Result<(), Status> {
    let name = &project.name;
    let ok = (2..=255).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(Status::invalid_argument(format!(
            "invalid project name {name:?}: use 2-255 letters, digits, - or _, starting with a letter or digit"
        )));
    }
    if let Some(env) = &project.environment {
        check_variables(&env.environment_variables)?;
        for mount in &env.host_paths {
            kiln_proto::policy::check_mount(mount).map_err(Status::invalid_argument)?;
        }
        if env.host_network && !project.vpc.is_empty() {
            return Err(Status::invalid_argument(
                "a project on the host network cannot join `vpc` networks: drop one",
            ));
        }
    }
    for v in &project.vpc {
        if v.network.is_empty() {
            return Err(Status::invalid_argument(
                "a `vpc` entry without a network: name an operator network from the worker config",
            ));
        }
    }
    if let Some(a) = &project.artifacts {
        if !["", "NONE", "ZIP"].contains(&a.packaging.as_str()) {
            return Err(Status::invalid_argument(format!(
                "artifacts.packaging {:?}: use NONE or ZIP",
                a.packaging
            )));
        }
    }
    if project.timeout_in_minutes > MAX_TIMEOUT_MINUTES {
        return Err(Status::invalid_argument(format!(
            "timeout_in_minutes is over the limit of {MAX_TIMEOUT_MINUTES}"
        )));
    }
    Ok(())
}

fn check_variables(vars: &[EnvironmentVariable]) -> Result<(), Status> {
    for v in vars {
        if !kiln_buildspec::names::is_shell_name(&v.name) {
            return Err(Status::invalid_argument(format!(
                "environment variable name {:?} is not a valid shell name",
                v.name
            )));
        }
        if !["", "PLAINTEXT", "PARAMETER_STORE", "SECRETS_MANAGER"].contains(&v.r#type.as_str()) {
            return Err(Status::invalid_argument(format!(
                "environment variable {} has type {:?}: use PLAINTEXT, PARAMETER_STORE or SECRETS_MANAGER",
                v.name, v.r#type
            )));
        }
    }
    Ok(())
}

fn pick(request: u32, project: u32, default: u32) -> u32 {
    [request, project]
        .into_iter()
        .find(|v| *v > 0)
        .unwrap_or(default)
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::Blobs;
    use crate::config::CoordinatorConfig;
    use crate::store::EmbeddedStore;
    use kiln_proto::v1::ProjectSource;

    fn request() -> StartBuildRequest {
        StartBuildRequest {
            project_ref: Some(start_build_request::ProjectRef::InlineProject(Project {
                name: "app".into(),
                source: Some(ProjectSource {
                    r#type: "GIT".into(),
                    location: "https://example.com/app.git".into(),
                    buildspec: "version: 0.2\nphases:\n  build:\n    commands: [true]\n".into(),
                    git_clone_depth: 1,
                }),
                ..Default::default()
            })),
            source: Some(start_build_request::Source::SourceDigest(
                "sha256:00".into(),
            )),
            timeout_in_minutes_override: 30,
            timeout_in_seconds_override: 90,
            cpus_override: 1.5,
            memory_bytes_override: 1 << 30,
            source_version: "abc123".into(),
            source_repo_url: "file:///src/app".into(),
            ..Default::default()
        }
    }

    fn core_in(dir: &std::path::Path) -> std::sync::Arc<Core<EmbeddedStore>> {
        let store = EmbeddedStore::open(&dir.join("state")).expect("store");
        let config = CoordinatorConfig::default().finish(dir).expect("config");
        let blobs = Blobs::open(dir, &config.store_config().expect("store")).expect("blobs");
        Core::new(store, blobs, config)
    }

    #[tokio::test]
    async fn fine_overrides_reach_the_assignment_and_a_retry() {
        let dir = tempfile::tempdir().expect("tmp");
        let core = core_in(dir.path());
        // The project's buildspec wins, so the source is never read.
        let chunks = futures_util::stream::iter([Ok(b"not a tar".to_vec())]);
        let digest = core
            .blobs
            .store_stream(1 << 20, chunks)
            .await
            .expect("stored")
            .digest;
        let mut req = request();
        req.source = Some(start_build_request::Source::SourceDigest(digest.clone()));
        let build = start(&core, req, None).await.expect("started");
        assert_eq!(build.timeout_in_minutes, 2, "90 s, rounded up");
        assert_eq!(build.resolved_source_version, "abc123");
        let row = core
            .store
            .get_build(&build.id)
            .await
            .expect("get")
            .expect("row");
        let spec = row.spec.clone().expect("spec");
        assert_eq!(spec.timeout_in_seconds, 90);
        assert_eq!((spec.cpus, spec.memory_bytes), (1.5, 1 << 30));
        assert_eq!(spec.source_version, "abc123");
        assert_eq!(spec.source_repo_url, "file:///src/app");
        let retry = retry_request(&row, project_of(&row), String::new());
        assert_eq!(retry.timeout_in_seconds_override, 90);
        assert_eq!(
            (retry.cpus_override, retry.memory_bytes_override),
            (1.5, 1 << 30)
        );
        assert_eq!(retry.source_version, "abc123");

        let mut bad = request();
        bad.source = Some(start_build_request::Source::SourceDigest(digest));
        bad.cpus_override = -1.0;
        let refused = start(&core, bad, None).await.expect_err("negative cpus");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_git_source_takes_the_project_s_clone_depth() {
        let dir = tempfile::tempdir().expect("tmp");
        let core = core_in(dir.path());
        let depth_of = |row: Option<StoredBuild>| match row.and_then(|r| r.spec)?.source? {
            assignment::Source::Git(g) => Some(g.clone_depth),
            assignment::Source::SourceDigest(_) => None,
        };
        let mut req = request();
        req.source = None;
        let build = start(&core, req, None).await.expect("started");
        let row = core.store.get_build(&build.id).await.expect("get");
        assert_eq!(depth_of(row), Some(1), "the project's gitCloneDepth");
        let mut req = request();
        req.source = Some(start_build_request::Source::Git(
            kiln_proto::v1::GitSource {
                url: "https://example.com/app.git".into(),
                revision: "main".into(),
                clone_depth: 5,
            },
        ));
        let build = start(&core, req, None).await.expect("started");
        let row = core.store.get_build(&build.id).await.expect("get");
        assert_eq!(depth_of(row), Some(5), "the request's own depth wins");
    }
}
