//! What to build: everything the phase runner needs, decided before the build starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_buildspec::Buildspec;

use crate::artifacts::ArtifactTarget;
use crate::cache::CacheStore;
use crate::docker::{ComputeType, Limits, Sandbox};
use crate::secrets::SecretStore;

/// One build to run.
#[derive(Debug, Clone)]
pub struct BuildJob {
    /// `<project>:<uuid>`; the uuid part (after the last `:`) names the build's Docker objects.
    pub build_id: String,
    pub project: String,
    pub build_number: u64,
    pub buildspec: Buildspec,
    /// Where the buildspec came from, for the `YAML location is` log line.
    pub buildspec_location: String,
    /// The checkout copied into `CODEBUILD_SRC_DIR`; never written to.
    pub source_dir: PathBuf,
    pub image: String,
    pub compute: ComputeType,
    pub limits: Limits,
    /// Project environment variables (middle precedence).
    pub project_env: Vec<(String, String)>,
    /// Per-build overrides from the client (highest precedence).
    pub env_overrides: Vec<(String, String)>,
    pub secrets: SecretStore,
    pub timeout: Duration,
    pub region: String,
    pub account: String,
    pub initiator: String,
    pub source_version: Option<String>,
    pub resolved_source_version: Option<String>,
    pub source_repo_url: Option<String>,
    pub artifacts: ArtifactTarget,
    /// What the build gets beyond the default sandbox (allowed by the worker's policy).
    pub sandbox: Sandbox,
    /// Where the buildspec's `cache` is restored from and saved to; `None`: caching is off (the
    /// project's cache type is NO_CACHE).
    pub cache: Option<Arc<dyn CacheStore>>,
}

impl BuildJob {
    /// A job with Kiln's defaults: a new build id `<project>:<uuid v4>`, SMALL compute,
    /// 60 minutes, region `us-east-1`.
    pub fn new(project: &str, buildspec: Buildspec, source_dir: PathBuf, image: &str) -> BuildJob {
        BuildJob {
            build_id: format!("{project}:{}", uuid::Uuid::new_v4()),
            project: project.to_string(),
            build_number: 1,
            buildspec,
            buildspec_location: "buildspec.yml".to_string(),
            source_dir,
            image: image.to_string(),
            compute: ComputeType::Small,
            limits: ComputeType::Small.limits(),
            project_env: Vec::new(),
            env_overrides: Vec::new(),
            secrets: SecretStore::default(),
            timeout: Duration::from_secs(60 * 60),
            region: "us-east-1".to_string(),
            account: "000000000000".to_string(),
            initiator: "kiln".to_string(),
            source_version: None,
            resolved_source_version: None,
            source_repo_url: None,
            artifacts: ArtifactTarget::default(),
            sandbox: Sandbox::default(),
            cache: None,
        }
    }
}
