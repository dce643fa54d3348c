//! From an `Assignment` to a [`BuildJob`], and from a [`BuildRecord`] to a `Completed` report.
//! Pure conversions; the build task (`build.rs`) does the I/O around them.
//!
//! Environment variables: precedence is the client's overrides, then the project's, then the
//! buildspec's `env` (semantics §3). A PLAINTEXT winner becomes a project or override variable
//! of the job; a PARAMETER_STORE or SECRETS_MANAGER winner is added to the buildspec's
//! `env.parameter-store` / `env.secrets-manager` (replacing any same-named buildspec variable), so
//! the phase runner resolves it from the worker's secret store in DOWNLOAD_SOURCE, masks it in the
//! log and fails the build naming the key when the store lacks it, exactly as for the buildspec's
//! own secrets. Any other type fails the build before it runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_buildspec::names::reserved_prefix;
use kiln_buildspec::routing::{PhaseType, Status};
use kiln_buildspec::Buildspec;
use kiln_proto::v1 as pb;

use super::checkout::Checkout;
use crate::artifacts::{ArtifactTarget, Packaging};
use crate::docker::{Attachment, ComputeType, Mount, Sandbox};
use crate::job::BuildJob;
use crate::record::{BuildArtifact, BuildPhase, BuildRecord, PhaseContext, Timestamp};
use crate::secrets::SecretStore;

/// What the worker adds to every job.
#[derive(Debug, Clone)]
pub struct JobDefaults {
    pub image: String,
    pub secrets: SecretStore,
    /// The operator's networks and sandbox exceptions (the worker config).
    pub policy: pb::SandboxPolicy,
    /// The process limit of every build container.
    pub pids_limit: i64,
}

/// A build's job, or the message that fails it before it runs (`CLIENT_ERROR`).
pub fn build_job(
    a: &pb::Assignment,
    buildspec: Buildspec,
    buildspec_location: String,
    checkout: &Checkout,
    artifacts_tar: PathBuf,
    defaults: &JobDefaults,
) -> Result<BuildJob, String> {
    let image = match a.image.as_str() {
        "" => defaults.image.as_str(),
        image => image,
    };
    let mut job = BuildJob::new(&a.project_name, buildspec, checkout.dir.clone(), image);
    job.sandbox = sandbox(a, &defaults.policy)?;
    job.build_id = a.build_id.clone();
    job.build_number = a.build_number;
    job.buildspec_location = buildspec_location;
    if !a.compute_type.is_empty() {
        job.compute = a.compute_type.parse::<ComputeType>()?;
        job.limits = job.compute.limits();
    }
    job.limits.pids = defaults.pids_limit;
    if a.cpus != 0.0 {
        if !a.cpus.is_finite() || a.cpus < 0.0 {
            return Err(format!("cpus {}: must be a positive number", a.cpus));
        }
        job.limits.cpus = a.cpus;
    }
    if a.memory_bytes > 0 {
        job.limits.memory_bytes = i64::try_from(a.memory_bytes)
            .map_err(|_| format!("memory of {} bytes is over Docker's limit", a.memory_bytes))?;
    }
    if a.timeout_in_seconds > 0 {
        job.timeout = Duration::from_secs(u64::from(a.timeout_in_seconds));
    } else if a.timeout_in_minutes > 0 {
        job.timeout = Duration::from_secs(u64::from(a.timeout_in_minutes) * 60);
    }
    let packaging = match a.packaging.as_str() {
        "" => Packaging::None,
        p => p.parse::<Packaging>()?,
    };
    job.artifacts = ArtifactTarget {
        tar: Some(artifacts_tar),
        packaging,
    };
    if !a.initiator.is_empty() {
        job.initiator = a.initiator.clone();
    }
    job.secrets = defaults.secrets.clone();
    job.source_version = checkout.source_version.clone();
    job.resolved_source_version = checkout.resolved_source_version.clone();
    job.source_repo_url = checkout.repo_url.clone();
    apply_environment(
        &mut job,
        &a.project_environment_variables,
        &a.environment_variables_override,
    )?;
    Ok(job)
}

/// The sandbox the build asks for, when the worker's policy admits it (the coordinator checked
/// too, but the worker's config may have changed since).
fn sandbox(a: &pb::Assignment, policy: &pb::SandboxPolicy) -> Result<Sandbox, String> {
    kiln_proto::policy::admit(policy, a).map_err(|refusal| refusal.to_string())?;
    if a.host_network && !a.vpc.is_empty() {
        return Err("a build on the host network cannot join `vpc` networks: drop one".into());
    }
    let networks = a
        .vpc
        .iter()
        .filter_map(|v| {
            let offered = policy.networks.iter().find(|n| n.name == v.network)?;
            Some(Attachment {
                name: offered.name.clone(),
                docker_network: offered.docker_network.clone(),
                aliases: v.aliases.clone(),
                internal: offered.internal,
            })
        })
        .collect();
    let mounts = a
        .host_paths
        .iter()
        .map(|m| {
            kiln_proto::policy::check_mount(m)?;
            Ok(Mount {
                host_path: m.host_path.clone(),
                container_path: m.container_path.clone(),
                read_only: m.read_only,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Sandbox {
        networks,
        privileged: a.privileged_mode,
        docker_socket: a.docker_socket,
        host_network: a.host_network,
        mounts,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VarType {
    Plaintext,
    ParameterStore,
    SecretsManager,
}

/// Applies the project's variables and the client's overrides (see the module docs).
fn apply_environment(
    job: &mut BuildJob,
    project: &[pb::EnvironmentVariable],
    overrides: &[pb::EnvironmentVariable],
) -> Result<(), String> {
    // name -> (is an override, type, value); later entries win.
    let mut winners: BTreeMap<&str, (bool, VarType, &str)> = BTreeMap::new();
    for (is_override, var) in project
        .iter()
        .map(|v| (false, v))
        .chain(overrides.iter().map(|v| (true, v)))
    {
        if let Some(prefix) = reserved_prefix(&var.name) {
            return Err(format!(
                "environment variable {}: names starting with {prefix} are reserved for Kiln",
                var.name
            ));
        }
        let kind = match var.r#type.to_ascii_uppercase().as_str() {
            "" | "PLAINTEXT" => VarType::Plaintext,
            "PARAMETER_STORE" => VarType::ParameterStore,
            "SECRETS_MANAGER" => VarType::SecretsManager,
            other => {
                return Err(format!(
                    "environment variable {}: unknown type {other:?}; use PLAINTEXT, \
                     PARAMETER_STORE or SECRETS_MANAGER",
                    var.name
                ))
            }
        };
        winners.insert(&var.name, (is_override, kind, &var.value));
    }
    let env = &mut job.buildspec.env;
    for (name, (is_override, kind, value)) in winners {
        let pair = (name.to_string(), value.to_string());
        match kind {
            VarType::Plaintext if is_override => job.env_overrides.push(pair),
            VarType::Plaintext => job.project_env.push(pair),
            secret => {
                env.variables.retain(|(n, _)| n != name);
                env.parameter_store.retain(|(n, _)| n != name);
                env.secrets_manager.retain(|(n, _)| n != name);
                match secret {
                    VarType::ParameterStore => env.parameter_store.push(pair),
                    _ => env.secrets_manager.push(pair),
                }
            }
        }
    }
    Ok(())
}

/// The files listed per artifact in a report; `file_count` has the total.
const MAX_LISTED_FILES: usize = 1000;

/// The `Completed` report of a finished build (the artifacts tar's digest and the log count are
/// filled in later). Artifact locations are paths in the artifacts tar.
pub fn completed(record: &BuildRecord, epoch: u64) -> pb::Completed {
    pb::Completed {
        build_id: record.id.clone(),
        epoch,
        build_status: record.build_status.as_str().to_string(),
        phases: record.phases.iter().map(phase).collect(),
        exported_environment_variables: record
            .exported_environment_variables
            .iter()
            .map(|v| pb::NameValue {
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect(),
        resolved_source_version: record.resolved_source_version.clone().unwrap_or_default(),
        artifacts: record.artifacts.as_ref().map(artifact),
        secondary_artifacts: record.secondary_artifacts.iter().map(artifact).collect(),
        network_interfaces: record
            .network_interfaces
            .iter()
            .map(|i| pb::NetworkInterface {
                network: i.network.clone(),
                docker_network: i.docker_network.clone(),
                ip_address: i.ip_address.clone(),
                aliases: i.aliases.clone(),
                internal: i.internal,
            })
            .collect(),
        ..Default::default()
    }
}

fn artifact(a: &BuildArtifact) -> pb::BuildArtifact {
    pb::BuildArtifact {
        artifact_identifier: a.artifact_identifier.clone().unwrap_or_default(),
        location: a.location.clone(),
        name: a.name.clone(),
        packaging: a.packaging.clone(),
        sha256sum: a.sha256sum.clone(),
        size_in_bytes: a.size_in_bytes,
        files: a
            .files
            .iter()
            .take(MAX_LISTED_FILES)
            .map(|f| pb::ArtifactFile {
                path: f.path.clone(),
                size_in_bytes: f.size_in_bytes,
                sha256sum: f.sha256sum.clone(),
                symlink_target: f.symlink_target.clone().unwrap_or_default(),
            })
            .collect(),
        file_count: a.files.len() as u64,
        s3_prefix: a.s3_prefix.clone().unwrap_or_default(),
    }
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.epoch_millis()).unwrap_or(i64::MAX)
}

fn phase(p: &BuildPhase) -> pb::BuildPhase {
    pb::BuildPhase {
        phase_type: p.phase_type.as_str().to_string(),
        phase_status: p
            .phase_status
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        start_time_ms: millis(p.start_time),
        end_time_ms: p.end_time.map(millis).unwrap_or_default(),
        duration_in_seconds: p.duration_in_seconds.unwrap_or_default(),
        contexts: p
            .contexts
            .iter()
            .map(|c| pb::PhaseContext {
                status_code: c.status_code.clone(),
                message: c.message.clone(),
            })
            .collect(),
    }
}

/// The report of a build that ended before a container was made: the source could not be had,
/// the buildspec is invalid, the assignment cannot run. The worker fetches and checks the source
/// before provisioning, so such a build lists DOWNLOAD_SOURCE (with `status` and the context)
/// and FINALIZING, and no PROVISIONING.
pub fn failed_early(
    a: &pb::Assignment,
    status: Status,
    code: &str,
    message: &str,
    started: Timestamp,
) -> pb::Completed {
    let now = Timestamp::now();
    let instant = |phase_type, at: Timestamp| BuildPhase {
        phase_type,
        phase_status: Some(Status::Succeeded),
        start_time: at,
        end_time: Some(at),
        duration_in_seconds: Some(0),
        contexts: Vec::new(),
    };
    let phases = [
        instant(PhaseType::Submitted, started),
        instant(PhaseType::Queued, started),
        BuildPhase {
            phase_type: PhaseType::DownloadSource,
            phase_status: Some(status),
            start_time: started,
            end_time: Some(now),
            duration_in_seconds: Some((now.0 - started.0).whole_seconds()),
            contexts: vec![PhaseContext {
                status_code: code.to_string(),
                message: message.to_string(),
            }],
        },
        instant(PhaseType::Finalizing, now),
    ];
    pb::Completed {
        build_id: a.build_id.clone(),
        epoch: a.epoch,
        build_status: status.as_str().to_string(),
        phases: phases.iter().map(phase).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str, kind: &str) -> pb::EnvironmentVariable {
        pb::EnvironmentVariable {
            name: name.into(),
            value: value.into(),
            r#type: kind.into(),
        }
    }

    fn job_with(
        spec: &str,
        project: &[pb::EnvironmentVariable],
        overrides: &[pb::EnvironmentVariable],
    ) -> Result<BuildJob, String> {
        let buildspec = kiln_buildspec::parse("buildspec.yml", spec)
            .expect("valid")
            .buildspec;
        let a = pb::Assignment {
            build_id: "p:0b7c".into(),
            epoch: 2,
            build_number: 7,
            project_name: "p".into(),
            compute_type: "MEDIUM".into(),
            timeout_in_minutes: 5,
            packaging: "ZIP".into(),
            project_environment_variables: project.to_vec(),
            environment_variables_override: overrides.to_vec(),
            ..Default::default()
        };
        let defaults = JobDefaults {
            image: "img:1".into(),
            secrets: SecretStore::default(),
            policy: pb::SandboxPolicy::default(),
            pids_limit: crate::docker::convert::DEFAULT_PIDS,
        };
        let checkout = Checkout::default();
        build_job(
            &a,
            buildspec,
            "x".into(),
            &checkout,
            "/out".into(),
            &defaults,
        )
    }

    const SPEC: &str = "version: 0.2\nenv:\n  variables:\n    A: spec\n    S: spec\n  parameter-store:\n    P: /p\nphases:\n  build:\n    commands: [true]\n";

    #[test]
    fn the_assignment_sets_the_job() {
        let job = job_with(SPEC, &[], &[]).expect("job");
        assert_eq!(job.build_id, "p:0b7c");
        assert_eq!(job.build_number, 7);
        assert_eq!(job.image, "img:1");
        assert_eq!(job.compute, ComputeType::Medium);
        assert_eq!(job.timeout, Duration::from_secs(300));
        assert_eq!(job.artifacts.packaging, Packaging::Zip);
        assert_eq!(job.artifacts.tar, Some(PathBuf::from("/out")));
    }

    #[test]
    fn fine_overrides_replace_the_compute_type_and_minutes() {
        let buildspec = kiln_buildspec::parse("buildspec.yml", SPEC)
            .expect("valid")
            .buildspec;
        let a = pb::Assignment {
            compute_type: "MEDIUM".into(),
            timeout_in_minutes: 2,
            timeout_in_seconds: 90,
            cpus: 1.5,
            memory_bytes: 512 << 20,
            ..Default::default()
        };
        let defaults = JobDefaults {
            image: "img:1".into(),
            secrets: SecretStore::default(),
            policy: pb::SandboxPolicy::default(),
            pids_limit: crate::docker::convert::DEFAULT_PIDS,
        };
        let job = build_job(
            &a,
            buildspec.clone(),
            "x".into(),
            &Checkout::default(),
            "/out".into(),
            &defaults,
        )
        .expect("job");
        assert_eq!(job.timeout, Duration::from_secs(90));
        assert_eq!(job.limits.cpus, 1.5);
        assert_eq!(job.limits.memory_bytes, 512 << 20);
        assert_eq!(job.limits.pids, ComputeType::Medium.limits().pids);
        let a = pb::Assignment {
            cpus: f64::NAN,
            ..a
        };
        let e = build_job(
            &a,
            buildspec,
            "x".into(),
            &Checkout::default(),
            "/out".into(),
            &defaults,
        )
        .expect_err("NaN cpus");
        assert!(e.contains("cpus"), "{e}");
    }

    #[test]
    fn artifacts_are_reported_by_their_place_in_the_tar() {
        let file = |i: usize| crate::record::ArtifactFile {
            path: format!("f{i}"),
            size_in_bytes: 1,
            sha256sum: "ab".into(),
            symlink_target: (i == 0).then(|| "f1".to_string()),
        };
        let artifact = |id: Option<&str>, location: &str, files: usize| BuildArtifact {
            artifact_identifier: id.map(str::to_string),
            location: location.into(),
            name: "n".into(),
            packaging: "NONE".into(),
            sha256sum: "cd".into(),
            size_in_bytes: files as u64,
            files: (0..files).map(file).collect(),
            s3_prefix: None,
        };
        let spec = kiln_buildspec::parse("buildspec.yml", SPEC)
            .expect("valid")
            .buildspec;
        let job = BuildJob::new("p", spec, "/src".into(), "img:1");
        let mut record = crate::phases::initial_record(&job, "p:1");
        record.artifacts = Some(artifact(None, "primary", 2));
        record.secondary_artifacts = vec![artifact(
            Some("docs"),
            "secondary/docs.zip",
            MAX_LISTED_FILES + 5,
        )];
        let c = completed(&record, 3);
        let primary = c.artifacts.expect("primary");
        assert_eq!(primary.location, "primary");
        assert_eq!(primary.files[0].symlink_target, "f1");
        assert_eq!((primary.files.len(), primary.file_count), (2, 2));
        let docs = &c.secondary_artifacts[0];
        assert_eq!(
            (docs.artifact_identifier.as_str(), docs.location.as_str()),
            ("docs", "secondary/docs.zip")
        );
        assert_eq!(docs.files.len(), MAX_LISTED_FILES);
        assert_eq!(docs.file_count, MAX_LISTED_FILES as u64 + 5);
    }

    #[test]
    fn secret_variables_go_to_the_secret_lists_with_precedence() {
        let project = [
            var("A", "project", "PLAINTEXT"),
            var("S", "/param/s", "PARAMETER_STORE"),
            var("P", "plain", ""),
            var("O", "db:password", "SECRETS_MANAGER"),
        ];
        let overrides = [
            var("O", "client", "PLAINTEXT"),
            var("A", "sm-id", "SECRETS_MANAGER"),
        ];
        let job = job_with(SPEC, &project, &overrides).expect("job");
        let env = &job.buildspec.env;
        assert_eq!(job.project_env, [("P".to_string(), "plain".to_string())]);
        assert_eq!(job.env_overrides, [("O".to_string(), "client".to_string())]);
        // S and A became secrets: the buildspec's plaintext values are gone.
        assert!(env.variables.is_empty(), "{:?}", env.variables);
        assert!(env
            .parameter_store
            .contains(&("S".into(), "/param/s".into())));
        assert!(env.secrets_manager.contains(&("A".into(), "sm-id".into())));
        // P stays a buildspec secret; the runner lets the project's plaintext win.
        assert!(env.parameter_store.contains(&("P".into(), "/p".into())));
    }

    #[test]
    fn bad_variables_and_settings_fail_the_build() {
        let e = job_with(SPEC, &[var("X", "v", "VAULT")], &[]).expect_err("type");
        assert!(e.contains("unknown type \"VAULT\""), "{e}");
        let e = job_with(SPEC, &[], &[var("CODEBUILD_X", "v", "")]).expect_err("reserved");
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn an_early_failure_reports_download_source() {
        let a = pb::Assignment {
            build_id: "p:1".into(),
            epoch: 4,
            ..Default::default()
        };
        let c = failed_early(
            &a,
            Status::Failed,
            "YAML_FILE_ERROR",
            "buildspec.yml:1:1: bad",
            Timestamp::now(),
        );
        assert_eq!(c.build_status, "FAILED");
        assert_eq!(c.epoch, 4);
        let names: Vec<&str> = c.phases.iter().map(|p| p.phase_type.as_str()).collect();
        assert_eq!(
            names,
            ["SUBMITTED", "QUEUED", "DOWNLOAD_SOURCE", "FINALIZING"]
        );
        assert_eq!(c.phases[2].contexts[0].status_code, "YAML_FILE_ERROR");
    }
}
