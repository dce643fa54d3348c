//! A build as JSON with CodeBuild's camelCase names (`buildStatus`, `phases[].phaseType`, times in
//! RFC 3339, `artifacts`, `secondaryArtifacts`), plus Kiln's own fields (`workerId`, `attempt`,
//! `queuedReason`, `artifactsDigest`, the artifacts' `files`).
//! Unset fields are left out, as CodeBuild leaves them out.

use kiln_proto::v1::{Build, BuildArtifact, BuildPhase};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch as RFC 3339 (UTC); `None` for 0 ("not yet").
pub fn rfc3339(ms: i64) -> Option<String> {
    if ms == 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// An object that leaves out nulls, empty strings and empty objects.
#[derive(Default)]
struct Object(Map<String, Value>);

impl Object {
    fn put(mut self, key: &str, value: impl Into<Value>) -> Object {
        match value.into() {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            Value::Object(o) if o.is_empty() => {}
            value => {
                self.0.insert(key.to_string(), value);
            }
        }
        self
    }

    fn time(self, key: &str, ms: i64) -> Object {
        self.put(key, rfc3339(ms))
    }
}

pub fn build_json(build: &Build) -> Value {
    let git = build.git.as_ref().map(|git| {
        Object::default()
            .put("url", git.url.as_str())
            .put("revision", git.revision.as_str())
            .0
    });
    let environment = Object::default()
        .put("image", build.image.as_str())
        .put("computeType", build.compute_type.as_str())
        .0;
    let variables: Vec<Value> = build
        .exported_environment_variables
        .iter()
        .map(|v| serde_json::json!({ "name": v.name, "value": v.value }))
        .collect();
    Object::default()
        .put("id", build.id.as_str())
        .put("arn", build.arn.as_str())
        .put("buildNumber", build.build_number)
        .put("projectName", build.project_name.as_str())
        .put("buildStatus", build.build_status.as_str())
        .put("currentPhase", build.current_phase.as_str())
        .put("buildComplete", build.build_complete)
        .put("initiator", build.initiator.as_str())
        .time("startTime", build.start_time_ms)
        .time("endTime", build.end_time_ms)
        .put("timeoutInMinutes", build.timeout_in_minutes)
        .put("queuedTimeoutInMinutes", build.queued_timeout_in_minutes)
        .put(
            "resolvedSourceVersion",
            build.resolved_source_version.as_str(),
        )
        .put("environment", environment)
        .put(
            "phases",
            build.phases.iter().map(phase_json).collect::<Vec<_>>(),
        )
        .put("exportedEnvironmentVariables", variables)
        .put("artifacts", build.artifacts.as_ref().map(artifact_json))
        .put(
            "secondaryArtifacts",
            build
                .secondary_artifacts
                .iter()
                .map(artifact_json)
                .collect::<Vec<_>>(),
        )
        .put(
            "networkInterfaces",
            (!build.network_interfaces.is_empty()).then(|| {
                build
                    .network_interfaces
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "network": i.network,
                            "dockerNetwork": i.docker_network,
                            "ipAddress": i.ip_address,
                            "aliases": i.aliases,
                            "internal": i.internal,
                        })
                    })
                    .collect::<Vec<_>>()
            }),
        )
        // Kiln's own fields.
        .time("queuedTime", build.queued_time_ms)
        .put("priority", build.priority)
        .put("sourceDigest", build.source_digest.as_str())
        .put("git", git)
        .put("workerId", build.worker_id.as_str())
        .put("attempt", build.attempt)
        .put("queuedReason", build.queued_reason.as_str())
        .put("artifactsDigest", build.artifacts_digest.as_str())
        .put(
            "artifactsSize",
            (build.artifacts_size > 0).then_some(build.artifacts_size),
        )
        .put("retryOf", build.retry_of.as_str())
        .put("stopRequested", build.stop_requested)
        .0
        .into()
}

/// An artifact as the worker summed it; `fileCount` tells when `files` is cut short.
fn artifact_json(artifact: &BuildArtifact) -> Value {
    let files: Vec<Value> = artifact
        .files
        .iter()
        .map(|f| {
            Object::default()
                .put("path", f.path.as_str())
                .put("sizeInBytes", f.size_in_bytes)
                .put("sha256sum", f.sha256sum.as_str())
                .put("symlinkTarget", f.symlink_target.as_str())
                .0
                .into()
        })
        .collect();
    Object::default()
        .put("artifactIdentifier", artifact.artifact_identifier.as_str())
        .put("location", artifact.location.as_str())
        .put("name", artifact.name.as_str())
        .put("packaging", artifact.packaging.as_str())
        .put("sha256sum", artifact.sha256sum.as_str())
        .put("sizeInBytes", artifact.size_in_bytes)
        .put("files", files)
        .put("fileCount", artifact.file_count)
        .put("s3Prefix", artifact.s3_prefix.as_str())
        .0
        .into()
}

fn phase_json(phase: &BuildPhase) -> Value {
    let contexts: Vec<Value> = phase
        .contexts
        .iter()
        .map(|c| serde_json::json!({ "statusCode": c.status_code, "message": c.message }))
        .collect();
    Object::default()
        .put("phaseType", phase.phase_type.as_str())
        .put("phaseStatus", phase.phase_status.as_str())
        .time("startTime", phase.start_time_ms)
        .time("endTime", phase.end_time_ms)
        .put(
            "durationInSeconds",
            (phase.end_time_ms > 0).then_some(phase.duration_in_seconds),
        )
        .put("contexts", contexts)
        .0
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1::{ArtifactFile, GitSource, NameValue, PhaseContext};
    use serde_json::json;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(
            rfc3339(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
    }

    #[test]
    fn a_build_has_codebuild_names() {
        let build = Build {
            id: "app:1f".into(),
            arn: "arn:kiln:build/app:1f".into(),
            build_number: 7,
            project_name: "app".into(),
            build_status: "FAILED".into(),
            current_phase: "COMPLETED".into(),
            build_complete: true,
            initiator: "ana".into(),
            start_time_ms: 1_700_000_000_000,
            end_time_ms: 1_700_000_042_000,
            git: Some(GitSource {
                url: "https://example.com/app.git".into(),
                ..GitSource::default()
            }),
            image: "kiln/build-image:bookworm".into(),
            phases: vec![
                BuildPhase {
                    phase_type: "BUILD".into(),
                    phase_status: "FAILED".into(),
                    start_time_ms: 1_700_000_001_000,
                    end_time_ms: 1_700_000_041_000,
                    duration_in_seconds: 40,
                    contexts: vec![PhaseContext {
                        status_code: "COMMAND_EXECUTION_ERROR".into(),
                        message: "make: exit status 2".into(),
                    }],
                },
                BuildPhase {
                    phase_type: "POST_BUILD".into(),
                    start_time_ms: 1_700_000_041_000,
                    ..Default::default()
                },
            ],
            exported_environment_variables: vec![NameValue {
                name: "VERSION".into(),
                value: "1.2".into(),
            }],
            worker_id: "w1".into(),
            attempt: 2,
            artifacts_digest: "sha256:ab".into(),
            artifacts: Some(BuildArtifact {
                location: "primary".into(),
                name: "app-1.2".into(),
                packaging: "NONE".into(),
                sha256sum: "cd".into(),
                size_in_bytes: 6,
                files: vec![ArtifactFile {
                    path: "app.txt".into(),
                    size_in_bytes: 6,
                    sha256sum: "ef".into(),
                    symlink_target: String::new(),
                }],
                file_count: 1,
                s3_prefix: "builds".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            build_json(&build),
            json!({
                "id": "app:1f",
                "arn": "arn:kiln:build/app:1f",
                "buildNumber": 7,
                "projectName": "app",
                "buildStatus": "FAILED",
                "currentPhase": "COMPLETED",
                "buildComplete": true,
                "initiator": "ana",
                "startTime": "2023-11-14T22:13:20Z",
                "endTime": "2023-11-14T22:14:02Z",
                "timeoutInMinutes": 0,
                "queuedTimeoutInMinutes": 0,
                "environment": { "image": "kiln/build-image:bookworm" },
                "phases": [
                    {
                        "phaseType": "BUILD",
                        "phaseStatus": "FAILED",
                        "startTime": "2023-11-14T22:13:21Z",
                        "endTime": "2023-11-14T22:14:01Z",
                        "durationInSeconds": 40,
                        "contexts": [
                            { "statusCode": "COMMAND_EXECUTION_ERROR", "message": "make: exit status 2" }
                        ]
                    },
                    {
                        "phaseType": "POST_BUILD",
                        "startTime": "2023-11-14T22:14:01Z",
                        "contexts": []
                    }
                ],
                "exportedEnvironmentVariables": [ { "name": "VERSION", "value": "1.2" } ],
                "artifacts": {
                    "location": "primary",
                    "name": "app-1.2",
                    "packaging": "NONE",
                    "sha256sum": "cd",
                    "sizeInBytes": 6,
                    "files": [ { "path": "app.txt", "sizeInBytes": 6, "sha256sum": "ef" } ],
                    "fileCount": 1,
                    "s3Prefix": "builds"
                },
                "secondaryArtifacts": [],
                "priority": 0,
                "git": { "url": "https://example.com/app.git" },
                "workerId": "w1",
                "attempt": 2,
                "artifactsDigest": "sha256:ab",
                "stopRequested": false
            })
        );
    }
}
