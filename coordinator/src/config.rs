//! The coordinator's configuration: a TOML file (`deploy/coordinator.toml` is the documented
//! example), each field overridable on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The default port; the default listen address is loopback (without tokens that is the only
/// one allowed).
pub const DEFAULT_PORT: u16 = 7420;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address of the gRPC listener (clients and workers).
    pub listen: SocketAddr,
    /// Where state lives: a directory (embedded store) or `redis://host:port/db`.
    pub state: String,
    /// Key prefix in Redis, so several Kiln installations can share one server.
    pub redis_prefix: String,
    /// Directory for sources, artifacts (shared by all coordinators of a cluster).
    pub data_dir: PathBuf,
    /// Bearer tokens accepted from clients. Empty: no auth, loopback only.
    pub client_tokens: Vec<String>,
    /// The token workers join with. Empty: no auth, loopback only.
    pub join_token: Option<String>,
    /// How long a lease lasts without a heartbeat (workers beat every third of it).
    #[serde(rename = "lease_ttl_ms", with = "millis")]
    pub lease_ttl: Duration,
    /// How often a build is assigned before worker losses make it FAULT.
    pub max_attempts: u32,
    /// Largest source archive accepted by UploadSource.
    pub max_upload_bytes: u64,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// A build attempt's log beyond this many bytes is dropped (with a note in the log).
    pub max_log_bytes: u64,
    /// Largest artifacts archive a worker may upload for one build.
    pub max_artifacts_bytes: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            state: String::new(),
            redis_prefix: "kiln:".to_string(),
            data_dir: PathBuf::new(),
            client_tokens: Vec::new(),
            join_token: None,
            lease_ttl: Duration::from_secs(30),
            max_attempts: 3,
            max_upload_bytes: 1 << 30,
            max_message_bytes: 4 << 20,
            max_log_bytes: 512 << 20,
            max_artifacts_bytes: 16 << 30,
        }
    }
}

impl CoordinatorConfig {
    /// Reads a TOML file; unknown keys are errors naming the key.
    pub fn load(path: &Path) -> anyhow::Result<CoordinatorConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading coordinator config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("coordinator config {}", path.display()))
    }

    /// Fills in defaults that depend on the data directory and checks the combination.
    pub fn finish(mut self, default_data_dir: &Path) -> anyhow::Result<CoordinatorConfig> {
        if self.data_dir.as_os_str().is_empty() {
            self.data_dir = default_data_dir.to_path_buf();
        }
        if self.state.is_empty() {
            self.state = self.data_dir.join("state").display().to_string();
        }
        let open = self.client_tokens.is_empty() || self.join_token.is_none();
        if open && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without authentication: set client_tokens and join_token \
                 (or --token and --join-token), or listen on a loopback address",
                self.listen
            );
        }
        if self.lease_ttl < Duration::from_millis(300) {
            bail!("lease_ttl_ms must be at least 300");
        }
        if self.max_attempts == 0 {
            bail!("max_attempts must be at least 1");
        }
        Ok(self)
    }

    /// Workers renew their leases this often.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// `lease_ttl_ms = 30000` in the file.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let config = CoordinatorConfig::load(&path).expect("deploy/coordinator.toml");
        assert_eq!(config.lease_ttl, Duration::from_secs(30));
        assert!(!config.client_tokens.is_empty());
        let config = config.finish(Path::new("/tmp")).expect("valid");
        assert!(config.state.starts_with("redis://") || !config.state.is_empty());
    }

    #[test]
    fn unknown_keys_and_open_public_listeners_are_refused() {
        let e = toml::from_str::<CoordinatorConfig>("lease_tll_ms = 5").err();
        assert!(e.is_some_and(|e| e.to_string().contains("lease_tll_ms")));
        let config = CoordinatorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7420)),
            ..CoordinatorConfig::default()
        };
        let e = config
            .finish(Path::new("/tmp"))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("without authentication")));
    }
}
