//! One assignment on the worker: source, buildspec, the phase runner, artifacts, report.
//!
//! Everything lives in a temporary directory removed when the task ends: `source.tar` (a fetched
//! archive), `src/` (the checkout), `artifacts/` (the runner's output, tarred into
//! `artifacts.tar` and uploaded with `UploadArtifacts` before the report). A build that cannot
//! start (no source, invalid buildspec, a bad assignment) still gets a log and a report.

use std::path::Path;
use std::sync::Arc;

use kiln_buildspec::routing::{PhaseType, Status};
use kiln_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::assignment::{build_job, completed, failed_early, JobDefaults};
use super::cache::CoordinatorCache;
use super::checkout::{extract, fetch_archive, git_clone, Checkout, CheckoutError};
use super::outbox::{LogOutbox, ProtocolSink};
use super::upload::{upload_artifacts, UploadError};
use super::{backoff, Client};
use crate::docker::Engine;
use crate::log::BuildLog;
use crate::mask::Masker;
use crate::record::Timestamp;
use crate::source::SRC_DIR;

/// What every build task of an agent shares.
pub struct BuildContext {
    pub engine: Engine,
    pub client: Client,
    pub defaults: JobDefaults,
    pub owner: String,
}

/// The handles of one running build.
pub struct BuildHandles {
    pub outbox: Arc<LogOutbox>,
    pub stop: CancellationToken,
    pub abandon: CancellationToken,
}

/// Runs an assignment to its report; `None` when the build was abandoned or its lease is gone.
pub async fn run_assignment(
    ctx: Arc<BuildContext>,
    a: pb::Assignment,
    handles: BuildHandles,
) -> Option<pb::Completed> {
    let started = Timestamp::now();
    let work = match tempfile::Builder::new().prefix("kiln-build-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            let message = format!("cannot make the build's work directory: {e}");
            return Some(early(
                &a,
                &handles,
                Status::Fault,
                "INTERNAL_ERROR",
                &message,
                started,
            ));
        }
    };
    let checkout = tokio::select! {
        biased;
        _ = handles.stop.cancelled() => {
            return Some(early(&a, &handles, Status::Stopped, "BUILD_STOPPED", "Build was stopped", started));
        }
        checkout = get_source(&ctx, &a, work.path()) => checkout,
    };
    let checkout = match checkout {
        Ok(c) => c,
        Err(e @ CheckoutError::Refused(_)) => {
            return Some(early(
                &a,
                &handles,
                Status::Failed,
                "CLIENT_ERROR",
                &e.to_string(),
                started,
            ));
        }
        Err(e) => {
            return Some(early(
                &a,
                &handles,
                Status::Fault,
                "INTERNAL_ERROR",
                &e.to_string(),
                started,
            ));
        }
    };
    let (buildspec, location) = match read_buildspec(&a, &checkout.dir) {
        Ok(parsed) => parsed,
        Err(message) => {
            return Some(early(
                &a,
                &handles,
                Status::Failed,
                "YAML_FILE_ERROR",
                &message,
                started,
            ));
        }
    };
    let artifacts_tar = work.path().join("artifacts.tar");
    let job = match build_job(
        &a,
        buildspec,
        location,
        &checkout,
        artifacts_tar.clone(),
        &ctx.defaults,
    ) {
        Ok(mut job) => {
            if !a.no_cache {
                job.cache = Some(Arc::new(CoordinatorCache {
                    client: ctx.client.clone(),
                    lease: pb::LeaseRef {
                        build_id: a.build_id.clone(),
                        epoch: a.epoch,
                    },
                }));
            }
            job
        }
        Err(message) => {
            return Some(early(
                &a,
                &handles,
                Status::Failed,
                "CLIENT_ERROR",
                &message,
                started,
            ));
        }
    };
    let sink = Box::new(ProtocolSink(handles.outbox.clone()));
    let record = crate::run_build(
        ctx.engine.clone(),
        job,
        sink,
        handles.stop.clone(),
        &ctx.owner,
    )
    .await;
    let mut report = completed(&record, a.epoch);
    let tar = record
        .artifacts
        .is_some()
        .then_some(artifacts_tar.as_path());
    match publish_artifacts(&ctx, &a, tar, &handles.abandon).await {
        Ok(Some(uploaded)) => {
            report.artifacts_digest = uploaded.digest;
            report.artifacts_size = uploaded.size;
        }
        Ok(None) => {}
        Err(UploadError::LeaseGone(status)) => {
            tracing::warn!(build_id = a.build_id, error = %status, "artifacts refused: the lease is gone");
            return None;
        }
        Err(UploadError::Abandoned) => return None,
        Err(e) => {
            tracing::error!(build_id = a.build_id, error = %e, "artifact upload failed");
            fault_on_upload(&mut report, &e.to_string());
        }
    }
    report.log_chunks = handles.outbox.seal();
    Some(report)
}

/// The build's source in `work/src`.
async fn get_source(
    ctx: &BuildContext,
    a: &pb::Assignment,
    work: &Path,
) -> Result<Checkout, CheckoutError> {
    let dir = work.join("src");
    match &a.source {
        Some(pb::assignment::Source::Git(git)) => {
            git_clone(&git.url, &git.revision, git.clone_depth, &dir).await
        }
        Some(pb::assignment::Source::SourceDigest(digest)) => {
            let archive = work.join("source.tar");
            let mut client = ctx.client.clone();
            fetch_with_retries(&mut client, digest, &archive).await?;
            std::fs::create_dir(&dir)?;
            let target = dir.clone();
            tokio::task::spawn_blocking(move || extract(&archive, &target))
                .await
                .map_err(|e| CheckoutError::Io(std::io::Error::other(e)))??;
            let known = |s: &str| (!s.is_empty()).then(|| s.to_string());
            Ok(Checkout {
                dir,
                source_version: known(&a.source_version),
                resolved_source_version: known(&a.source_version),
                repo_url: known(&a.source_repo_url),
            })
        }
        // NO_SOURCE: an empty directory.
        None => {
            std::fs::create_dir(&dir)?;
            Ok(Checkout {
                dir,
                ..Default::default()
            })
        }
    }
}

/// Transient failures (the coordinator restarting) are retried a few times; a missing archive
/// is not.
async fn fetch_with_retries(
    client: &mut Client,
    digest: &str,
    dest: &Path,
) -> Result<(), CheckoutError> {
    let mut attempt = 0;
    loop {
        match fetch_archive(client, digest, dest).await {
            Err(CheckoutError::Fetch { status, .. }) if status.code() == tonic::Code::NotFound => {
                return Err(CheckoutError::Refused(format!(
                    "source archive {digest} is not in the coordinator's store; upload it again"
                )))
            }
            Err(CheckoutError::Fetch { status, .. }) if attempt < 5 && transient(status.code()) => {
                tracing::warn!(digest, error = %status, "fetching the source failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// gRPC codes worth another try: the peer or the path to it is having a moment.
pub fn transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

/// The assignment's buildspec text, else `buildspec.yml` in the source; `Err` is the
/// `file:line:col` message of a YAML_FILE_ERROR.
/// The buildspec and where it is (for the `YAML location is` line): the assignment's text, named
/// by its path in the source when it has one, else `buildspec.yml` from the checkout.
fn read_buildspec(
    a: &pb::Assignment,
    src: &Path,
) -> Result<(kiln_buildspec::Buildspec, String), String> {
    let (name, text) = match a.buildspec.as_str() {
        "" => {
            let text = std::fs::read_to_string(src.join("buildspec.yml"))
                .map_err(|e| format!("buildspec.yml: cannot read the source's buildspec: {e}"))?;
            ("buildspec.yml", text)
        }
        text if a.buildspec_path.is_empty() => ("buildspec", text.to_string()),
        text => (a.buildspec_path.as_str(), text.to_string()),
    };
    let parsed = kiln_buildspec::parse(name, &text).map_err(|errors| errors.to_string())?;
    if parsed.buildspec.batch.is_some() && parsed.buildspec.phases.is_empty() {
        return Err(format!("{name}: batch builds are not supported yet"));
    }
    let location = match name {
        "buildspec" => "the project's buildspec".to_string(),
        path => format!("{SRC_DIR}/{path}"),
    };
    Ok((parsed.buildspec, location))
}

/// A report for a build that ended before the runner; its log says why, in the runner's format.
fn early(
    a: &pb::Assignment,
    handles: &BuildHandles,
    status: Status,
    code: &str,
    message: &str,
    started: Timestamp,
) -> pb::Completed {
    let mut log = BuildLog::new(
        Masker::none(),
        Box::new(ProtocolSink(handles.outbox.clone())),
    );
    log.phase(PhaseType::DownloadSource);
    log.agent("Entering phase DOWNLOAD_SOURCE");
    log.agent(&format!(
        "Phase complete: DOWNLOAD_SOURCE State: {}",
        status.as_str()
    ));
    log.agent(&format!(
        "Phase context status code: {code} Message: {message}"
    ));
    drop(log);
    let mut report = failed_early(a, status, code, message, started);
    report.log_chunks = handles.outbox.seal();
    report
}

/// Uploads the artifacts tar the runner wrote, when it collected artifacts.
async fn publish_artifacts(
    ctx: &BuildContext,
    a: &pb::Assignment,
    tar: Option<&Path>,
    abandon: &CancellationToken,
) -> Result<Option<pb::UploadArtifactsResponse>, UploadError> {
    let Some(tar_path) = tar else {
        return Ok(None);
    };
    let size = tokio::fs::metadata(tar_path).await?.len();
    let lease = pb::LeaseRef {
        build_id: a.build_id.clone(),
        epoch: a.epoch,
    };
    let mut attempt = 0;
    loop {
        let mut client = ctx.client.clone();
        let result = tokio::select! {
            _ = abandon.cancelled() => return Err(UploadError::Abandoned),
            r = upload_artifacts(&mut client, lease.clone(), tar_path, size) => r,
        };
        match result {
            Ok(response) => return Ok(Some(response)),
            Err(UploadError::Rpc(status)) if transient(status.code()) => {
                tracing::warn!(build_id = a.build_id, error = %status, "artifact upload failed; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = abandon.cancelled() => return Err(UploadError::Abandoned),
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
        attempt = attempt.saturating_add(1);
    }
}

/// The build could not publish its artifacts: Kiln's failure, so FAULT, noted on the phase.
fn fault_on_upload(report: &mut pb::Completed, message: &str) {
    report.build_status = Status::Fault.as_str().to_string();
    let upload = report
        .phases
        .iter_mut()
        .rev()
        .find(|p| p.phase_type == PhaseType::UploadArtifacts.as_str());
    if let Some(phase) = upload {
        phase.contexts.push(pb::PhaseContext {
            status_code: "INTERNAL_ERROR".to_string(),
            message: format!("artifact upload failed: {message}"),
        });
    }
}
