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
    /// Where sources and artifacts are kept (`[store]`).
    pub store: StoreSettings,
    /// How often retention runs (see `retention`).
    pub retention_interval_s: u64,
    /// How long a blob nothing refers to is kept after it was written: an upload a build or a
    /// cache save is about to refer to is never collected (see `retention::sweep`).
    pub blob_grace_s: u64,
    /// How long and how much build caches are kept (`[caches]`).
    #[serde(deserialize_with = "cache_section")]
    pub caches: Retention,
    /// How long and how much build artifacts are kept (`[artifacts]`; by default, all).
    pub artifacts: Retention,
}

/// `[caches]` and `[artifacts]`: per project, what was last used more than `max_age_days` ago
/// goes, then the least recently used until the rest fits in `max_bytes_per_project`. 0: no
/// limit. A key left out keeps its section's default (caches: 30 days, 20 GiB; artifacts: none).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub max_age_days: u32,
    #[serde(default)]
    pub max_bytes_per_project: u64,
}

/// `[caches]` as it is read: each key missing takes the cache default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    max_age_days: Option<u32>,
    max_bytes_per_project: Option<u64>,
}

fn cache_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Retention, D::Error> {
    let section = CacheSection::deserialize(d)?;
    let default = Retention::caches();
    Ok(Retention {
        max_age_days: section.max_age_days.unwrap_or(default.max_age_days),
        max_bytes_per_project: section
            .max_bytes_per_project
            .unwrap_or(default.max_bytes_per_project),
    })
}

impl Retention {
    /// The cache defaults.
    fn caches() -> Retention {
        Retention {
            max_age_days: 30,
            max_bytes_per_project: 20 << 30,
        }
    }

    /// Which items (last used, in ms since the epoch, and size) go at `now_ms`, in their order.
    pub fn expired(&self, items: &[(i64, u64)], now_ms: i64) -> Vec<bool> {
        let max_age_ms = i64::from(self.max_age_days) * 24 * 3600 * 1000;
        let mut newest_first: Vec<usize> = (0..items.len()).collect();
        newest_first.sort_by_key(|&i| std::cmp::Reverse(items[i].0));
        let mut gone = vec![false; items.len()];
        let mut kept_bytes = 0u64;
        for i in newest_first {
            let (used, size) = items[i];
            let too_old = self.max_age_days > 0 && now_ms - used > max_age_ms;
            let too_big =
                self.max_bytes_per_project > 0 && kept_bytes + size > self.max_bytes_per_project;
            match too_old || too_big {
                true => gone[i] = true,
                false => kept_bytes += size,
            }
        }
        gone
    }
}

/// `[store]`: the blob store for sources, artifacts and caches.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `local` (the default) or `s3`.
    pub backend: String,
    /// The local backend's directory (default: `<data_dir>/store`).
    pub path: Option<PathBuf>,
    /// The S3 backend: endpoint (empty = AWS), region, bucket, key prefix, addressing.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub path_style: Option<bool>,
    /// Credentials; the environment's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY when unset.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A file holding 64 hex digits: blobs are encrypted at rest with it (AES-256-GCM). The
    /// environment's KILN_STORE_KEY (the digits themselves) works too.
    pub encryption_key_file: Option<PathBuf>,
    /// zstd level, 1 (fast) to 19 (small); default 3.
    pub compression_level: Option<i32>,
    /// Also keep each build's artifacts tar as it is (neither compressed nor encrypted), so
    /// `kiln artifacts ID --url` can hand out a presigned URL to it. S3 only, and not while the
    /// store encrypts at rest; doubles what artifacts take.
    pub presigned_artifacts: bool,
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
            store: StoreSettings::default(),
            retention_interval_s: 600,
            blob_grace_s: 86_400,
            caches: Retention::caches(),
            artifacts: Retention::default(),
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
        if self.retention_interval_s == 0 {
            bail!("retention_interval_s must be at least 1");
        }
        Ok(self)
    }

    /// The blob store's configuration, with secrets from their files or the environment.
    pub fn store_config(&self) -> anyhow::Result<kiln_cache::StoreConfig> {
        let s = &self.store;
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let backend = match s.backend.as_str() {
            "" | "local" => kiln_cache::Backend::Local {
                root: s
                    .path
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("store")),
            },
            "s3" => {
                let access_key_id = s
                    .access_key_id
                    .clone()
                    .or_else(|| from_env("AWS_ACCESS_KEY_ID"));
                let secret_access_key = s
                    .secret_access_key
                    .clone()
                    .or_else(|| from_env("AWS_SECRET_ACCESS_KEY"));
                let (Some(access_key_id), Some(secret_access_key)) =
                    (access_key_id, secret_access_key)
                else {
                    bail!(
                        "[store] backend = \"s3\" needs credentials: set access_key_id and \
                         secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    );
                };
                if s.bucket.is_empty() {
                    bail!("[store] backend = \"s3\" needs a bucket");
                }
                kiln_cache::Backend::S3(kiln_cache::S3Config {
                    endpoint: s.endpoint.clone(),
                    region: match s.region.as_str() {
                        "" => "us-east-1".to_string(),
                        r => r.to_string(),
                    },
                    bucket: s.bucket.clone(),
                    access_key_id,
                    secret_access_key,
                    // Self-hosted services (an endpoint is set) want path-style requests.
                    path_style: s.path_style.unwrap_or(!s.endpoint.is_empty()),
                })
            }
            other => bail!("[store] backend = {other:?}: use \"local\" or \"s3\""),
        };
        let key = match (&s.encryption_key_file, from_env("KILN_STORE_KEY")) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("[store] encryption_key_file {}", path.display()))?;
                Some(kiln_cache::EncryptionKey::from_hex(&text).map_err(|e| {
                    anyhow::anyhow!("[store] encryption_key_file {}: {e}", path.display())
                })?)
            }
            (None, Some(text)) => Some(
                kiln_cache::EncryptionKey::from_hex(&text)
                    .map_err(|e| anyhow::anyhow!("KILN_STORE_KEY: {e}"))?,
            ),
            (None, None) => None,
        };
        let level = s.compression_level.unwrap_or(3);
        if !(1..=19).contains(&level) {
            bail!("[store] compression_level = {level}: use 1 (fast) to 19 (small)");
        }
        if s.presigned_artifacts && !matches!(backend, kiln_cache::Backend::S3(_)) {
            bail!(
                "[store] presigned_artifacts needs backend = \"s3\": a directory cannot sign URLs"
            );
        }
        if s.presigned_artifacts && key.is_some() {
            bail!(
                "[store] presigned_artifacts keeps artifacts unencrypted, but the store encrypts at \
                 rest (encryption_key_file or KILN_STORE_KEY): turn one of them off"
            );
        }
        Ok(kiln_cache::StoreConfig {
            backend,
            prefix: s.prefix.clone(),
            key,
            level,
        })
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
        assert_eq!(config.store.backend, "s3");
        assert_eq!(config.store.bucket, "kiln");
        assert_eq!(config.store.path_style, Some(true));
        assert_eq!(config.caches.max_age_days, 14);
        assert_eq!(config.caches.max_bytes_per_project, 5 << 30);
        assert_eq!(config.artifacts.max_age_days, 90);
        assert_eq!(config.retention_interval_s, 600);
        assert_eq!(config.blob_grace_s, 86_400);
        let config = config.finish(Path::new("/tmp")).expect("valid");
        assert!(config.state.starts_with("redis://") || !config.state.is_empty());
    }

    #[test]
    fn retention_drops_the_old_then_the_least_recently_used_beyond_the_budget() {
        const DAY: i64 = 24 * 3600 * 1000;
        let now = 100 * DAY;
        let items = [
            (now - DAY, 40),
            (now - 31 * DAY, 1),
            (now - 2 * DAY, 50),
            (now - 3 * DAY, 20),
            (now - 4 * DAY, 10),
        ];
        let policy = Retention {
            max_age_days: 30,
            max_bytes_per_project: 100,
        };
        // 40 + 50 fit, the 20 does not, the 10 still does; the 31-day-old one is too old.
        assert_eq!(
            policy.expired(&items, now),
            [false, true, false, true, false]
        );
        assert_eq!(Retention::default().expired(&items, now), [false; 5]);
    }

    #[test]
    fn a_cache_section_keeps_the_defaults_it_does_not_name() {
        let config: CoordinatorConfig =
            toml::from_str("[caches]\nmax_age_days = 7\n").expect("parse");
        assert_eq!(config.caches.max_age_days, 7);
        assert_eq!(config.caches.max_bytes_per_project, 20 << 30);
        let config: CoordinatorConfig = toml::from_str("").expect("parse");
        assert_eq!(config.caches.max_age_days, 30);
        let e = toml::from_str::<CoordinatorConfig>("[caches]\nmax_age = 7\n")
            .err()
            .expect("unknown key");
        assert!(e.to_string().contains("max_age"), "{e}");
    }

    #[test]
    fn presigned_artifacts_need_s3_and_no_encryption() {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = CoordinatorConfig::default()
            .finish(dir.path())
            .expect("config");
        config.store.presigned_artifacts = true;
        let e = config.store_config().expect_err("local").to_string();
        assert!(
            e.contains("presigned_artifacts needs backend = \"s3\""),
            "{e}"
        );
        config.store.backend = "s3".into();
        config.store.bucket = "b".into();
        config.store.access_key_id = Some("a".into());
        config.store.secret_access_key = Some("s".into());
        config.store_config().expect("s3 without a key");
        let key = dir.path().join("key");
        std::fs::write(&key, "11".repeat(32)).expect("key");
        config.store.encryption_key_file = Some(key);
        let e = config.store_config().expect_err("encrypted").to_string();
        assert!(e.contains("keeps artifacts unencrypted"), "{e}");
    }

    #[test]
    fn the_store_section_becomes_a_store_config() {
        let dir = tempfile::tempdir().expect("dir");
        let local = CoordinatorConfig::default()
            .finish(dir.path())
            .expect("config")
            .store_config()
            .expect("local store");
        assert_eq!(
            local.backend,
            kiln_cache::Backend::Local {
                root: dir.path().join("store")
            }
        );
        assert!(local.key.is_none());
        let key_file = dir.path().join("store.key");
        std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).expect("key");
        let text = format!(
            "[store]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"b\"\n\
             access_key_id = \"a\"\nsecret_access_key = \"s\"\nencryption_key_file = {:?}\n",
            key_file.display().to_string()
        );
        let s3 = toml::from_str::<CoordinatorConfig>(&text)
            .expect("parses")
            .store_config()
            .expect("s3 store");
        let kiln_cache::Backend::S3(b) = &s3.backend else {
            panic!("an S3 backend");
        };
        assert!(b.path_style, "an endpoint means path-style");
        assert_eq!(b.region, "us-east-1");
        assert!(s3.key.is_some());
        assert!(!format!("{s3:?}").contains("\"s\""), "no secret in Debug");
        let bad = |text: &str| {
            toml::from_str::<CoordinatorConfig>(text)
                .expect("parses")
                .store_config()
                .map(|_| ())
                .expect_err("refused")
                .to_string()
        };
        assert!(bad("[store]\nbackend = \"ftp\"\n").contains("use \"local\" or \"s3\""));
        assert!(bad("[store]\ncompression_level = 30\n").contains("1 (fast) to 19"));
        let no_key = format!(
            "[store]\nencryption_key_file = {:?}\n",
            dir.path().join("x").display().to_string()
        );
        assert!(bad(&no_key).contains("encryption_key_file"));
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
