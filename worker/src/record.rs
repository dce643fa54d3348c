//! The build record: what a build did, in CodeBuild's `Build` field names so tools written for the
//! CodeBuild API can read Kiln's JSON unchanged.

use kiln_buildspec::routing::{PhaseType, Status};
use serde::Serialize;
use time::OffsetDateTime;

/// A point in time, serialized as RFC 3339 (what the AWS CLI prints for CodeBuild timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Milliseconds since the epoch (`CODEBUILD_START_TIME`).
    pub fn epoch_millis(self) -> i128 {
        self.0.unix_timestamp_nanos() / 1_000_000
    }

    /// `2024/01/31 12:00:00.123456`, the timestamp CodeBuild's agent puts on its log lines.
    pub fn log_format(self) -> String {
        let t = self.0;
        format!(
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.{:06}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self
            .0
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

/// `{statusCode, message}` of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseContext {
    pub status_code: String,
    pub message: String,
}

/// One phase that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildPhase {
    pub phase_type: PhaseType,
    pub phase_status: Option<Status>,
    pub start_time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_in_seconds: Option<i64>,
    pub contexts: Vec<PhaseContext>,
}

/// `{name, value}` pairs (exported variables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// `environment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildEnvironment {
    #[serde(rename = "type")]
    pub kind: String,
    pub image: String,
    pub compute_type: String,
    /// Variables set by the client or project; secret values are never listed.
    pub environment_variables: Vec<EnvironmentVariable>,
}

/// A plaintext variable set by the project or the client (secrets are never on the record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvironmentVariable {
    pub name: String,
    pub value: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// One file in an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactFile {
    pub path: String,
    pub size_in_bytes: u64,
    pub sha256sum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// A stored artifact (`artifacts` or one of `secondaryArtifacts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildArtifact {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_identifier: Option<String>,
    pub location: String,
    pub name: String,
    pub packaging: String,
    /// SHA-256 of the ZIP file, or for a tree of the manifest (`<sha256>  <path>` lines, sorted).
    pub sha256sum: String,
    pub size_in_bytes: u64,
    pub files: Vec<ArtifactFile>,
    /// The buildspec's `s3-prefix`, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_prefix: Option<String>,
}

/// A build, as CodeBuild's `Build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    pub id: String,
    pub arn: String,
    pub build_number: u64,
    pub project_name: String,
    pub build_status: Status,
    pub current_phase: PhaseType,
    pub build_complete: bool,
    pub initiator: String,
    pub start_time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Timestamp>,
    pub timeout_in_minutes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_source_version: Option<String>,
    pub phases: Vec<BuildPhase>,
    pub environment: BuildEnvironment,
    pub exported_environment_variables: Vec<NameValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<BuildArtifact>,
    pub secondary_artifacts: Vec<BuildArtifact>,
    /// Where the build container was attached, with its address on each network (CodeBuild's
    /// `networkInterface`); empty on the host network.
    pub network_interfaces: Vec<NetworkInterface>,
}

/// One network the build container was on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    /// The operator network's name; empty for the build's own network.
    pub network: String,
    pub docker_network: String,
    pub ip_address: String,
    pub aliases: Vec<String>,
    pub internal: bool,
}

impl BuildRecord {
    /// Opens a phase (IN_PROGRESS) and makes it the current one.
    pub fn begin_phase(&mut self, phase: PhaseType) {
        self.current_phase = phase;
        self.phases.push(BuildPhase {
            phase_type: phase,
            phase_status: Some(Status::InProgress),
            start_time: Timestamp::now(),
            end_time: None,
            duration_in_seconds: None,
            contexts: Vec::new(),
        });
    }

    /// Closes the open phase with a status and, for anything but success, a context.
    pub fn end_phase(&mut self, status: Status, context: Option<PhaseContext>) {
        if let Some(phase) = self.phases.last_mut() {
            let end = Timestamp::now();
            phase.phase_status = Some(status);
            phase.duration_in_seconds = Some((end.0 - phase.start_time.0).whole_seconds());
            phase.end_time = Some(end);
            phase.contexts.extend(context);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_codebuild() {
        let t = Timestamp(time::macros::datetime!(2024-01-31 12:03:04.000005 UTC));
        assert_eq!(t.log_format(), "2024/01/31 12:03:04.000005");
        let json = serde_json::to_string(&t).expect("json");
        assert_eq!(json, "\"2024-01-31T12:03:04.000005Z\"");
    }

    #[test]
    fn phase_json_uses_codebuild_names() {
        let phase = BuildPhase {
            phase_type: PhaseType::DownloadSource,
            phase_status: Some(Status::Failed),
            start_time: Timestamp(time::macros::datetime!(2024-01-31 12:00:00 UTC)),
            end_time: None,
            duration_in_seconds: Some(2),
            contexts: vec![PhaseContext {
                status_code: "YAML_FILE_ERROR".into(),
                message: "bad".into(),
            }],
        };
        let v = serde_json::to_value(&phase).expect("json");
        assert_eq!(v["phaseType"], "DOWNLOAD_SOURCE");
        assert_eq!(v["phaseStatus"], "FAILED");
        assert_eq!(v["durationInSeconds"], 2);
        assert_eq!(v["contexts"][0]["statusCode"], "YAML_FILE_ERROR");
    }
}
