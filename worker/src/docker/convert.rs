//! Pure conversion from a build to Docker objects: deterministic names, labels that let a later
//! process find and reap leftovers, and the container's resource limits. Unit-tested without a daemon.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};

/// Label on everything Kiln creates.
pub const LABEL_MANAGED: &str = "kiln.managed";
/// The build a container or network belongs to.
pub const LABEL_BUILD_ID: &str = "kiln.build-id";
/// One run of a build (a build may run again after a worker was lost, even on the same host).
pub const LABEL_RUN: &str = "kiln.run";
/// `build` (container) or `network`.
pub const LABEL_ROLE: &str = "kiln.role";
/// The process that created the object: `<host>/<pid>/<process start ticks>`.
pub const LABEL_OWNER: &str = "kiln.owner";
/// The project the build belongs to.
pub const LABEL_PROJECT: &str = "kiln.project";

/// The container's main process: it only keeps the container alive while items run through
/// `docker exec`; Docker's init (`init: true`) reaps the background processes items leave behind.
const KEEPALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 86400 & wait $!; done";

/// CodeBuild compute types and their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeType {
    Small,
    Medium,
    Large,
}

impl ComputeType {
    /// CodeBuild's name (`BUILD_GENERAL1_SMALL`).
    pub fn codebuild_name(self) -> &'static str {
        match self {
            ComputeType::Small => "BUILD_GENERAL1_SMALL",
            ComputeType::Medium => "BUILD_GENERAL1_MEDIUM",
            ComputeType::Large => "BUILD_GENERAL1_LARGE",
        }
    }

    /// The default limits: SMALL 2 CPU / 3 GiB, MEDIUM 4 / 7 GiB, LARGE 8 / 15 GiB.
    pub fn limits(self) -> Limits {
        let (cpus, gib) = match self {
            ComputeType::Small => (2.0, 3),
            ComputeType::Medium => (4.0, 7),
            ComputeType::Large => (8.0, 15),
        };
        Limits {
            cpus,
            memory_bytes: gib << 30,
            pids: DEFAULT_PIDS,
        }
    }
}

/// Enough processes for parallel compilers and test runners, few enough to stop a fork bomb.
pub const DEFAULT_PIDS: i64 = 4096;

impl FromStr for ComputeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        match upper.trim_start_matches("BUILD_GENERAL1_") {
            "SMALL" => Ok(ComputeType::Small),
            "MEDIUM" => Ok(ComputeType::Medium),
            "LARGE" => Ok(ComputeType::Large),
            _ => Err(format!(
                "unknown compute type {s:?}: use SMALL, MEDIUM or LARGE (or BUILD_GENERAL1_SMALL, ...)"
            )),
        }
    }
}

impl fmt::Display for ComputeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.codebuild_name())
    }
}

/// CPU, memory and process limits of a build container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub cpus: f64,
    pub memory_bytes: i64,
    pub pids: i64,
}

impl Limits {
    /// Docker refuses more CPUs than the daemon's machine has; a build asking for more gets all.
    pub fn fit_to(self, host_cpus: Option<i64>) -> Limits {
        match host_cpus {
            Some(n) if n > 0 && self.cpus > n as f64 => Limits {
                cpus: n as f64,
                ..self
            },
            _ => self,
        }
    }
}

/// The Docker objects of one run of a build, named from the run's id; labelled with the build and
/// the run so any process can find them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResources {
    pub build_id: String,
    /// This run's id: two runs of one build never share or remove each other's objects.
    pub run: String,
    pub container: String,
    pub network: String,
    pub labels: HashMap<String, String>,
}

impl BuildResources {
    /// `run` names this run of the build (unique); `owner` identifies the creating process.
    pub fn new(build_id: &str, run: &str, project: &str, owner: &str) -> BuildResources {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_BUILD_ID.to_string(), build_id.to_string()),
            (LABEL_RUN.to_string(), run.to_string()),
            (LABEL_PROJECT.to_string(), project.to_string()),
            (LABEL_OWNER.to_string(), owner.to_string()),
        ]);
        BuildResources {
            build_id: build_id.to_string(),
            run: run.to_string(),
            container: format!("kiln-build-{run}"),
            network: format!("kiln-net-{run}"),
            labels,
        }
    }

    fn labels_with_role(&self, role: &str) -> HashMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_ROLE.to_string(), role.to_string());
        labels
    }

    /// The build's own bridge network.
    pub fn network_request(&self) -> NetworkCreateRequest {
        NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".to_string()),
            labels: Some(self.labels_with_role("network")),
            ..Default::default()
        }
    }

    /// The build container: the image, kept alive by a shell loop, on the build's network, with
    /// limits; no host paths, no privileges. Build variables are not set here (they go with each
    /// exec) so secrets never appear in `docker inspect`.
    pub fn container_body(&self, image: &str, limits: Limits) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
            cmd: Some(vec![KEEPALIVE.to_string()]),
            labels: Some(self.labels_with_role("build")),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                nano_cpus: Some((limits.cpus * 1e9) as i64),
                memory: Some(limits.memory_bytes),
                memory_swap: Some(limits.memory_bytes),
                pids_limit: Some(limits.pids),
                init: Some(true),
                privileged: Some(false),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Identifies this process across restarts of the pid counter: host, pid and process start time.
pub fn process_owner(host: &str, pid: u32, start_ticks: &str) -> String {
    format!("{host}/{pid}/{start_ticks}")
}

/// Splits an owner label into (host, pid, start ticks).
pub fn parse_owner(owner: &str) -> Option<(&str, u32, &str)> {
    let mut parts = owner.rsplitn(3, '/');
    let ticks = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    Some((host, pid, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_types_parse_and_map_to_limits() {
        assert_eq!("small".parse(), Ok(ComputeType::Small));
        assert_eq!("BUILD_GENERAL1_LARGE".parse(), Ok(ComputeType::Large));
        assert!("HUGE".parse::<ComputeType>().is_err());
        let m = ComputeType::Medium.limits();
        assert_eq!((m.cpus, m.memory_bytes), (4.0, 7 << 30));
        let l = ComputeType::Large.limits();
        assert_eq!((l.cpus, l.memory_bytes), (8.0, 15 << 30));
        assert_eq!(ComputeType::Small.limits().memory_bytes, 3 << 30);
    }

    #[test]
    fn limits_fit_the_host() {
        let l = ComputeType::Large.limits().fit_to(Some(2));
        assert_eq!(l.cpus, 2.0);
        assert_eq!(ComputeType::Small.limits().fit_to(None).cpus, 2.0);
    }

    #[test]
    fn names_and_labels_come_from_the_run() {
        let r = BuildResources::new("app:1234", "1234", "app", "h/1/2");
        assert_eq!(r.container, "kiln-build-1234");
        assert_eq!(r.network, "kiln-net-1234");
        let body = r.container_body("img:1", ComputeType::Small.limits());
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_BUILD_ID], "app:1234");
        assert_eq!(labels[LABEL_RUN], "1234");
        assert_eq!(labels[LABEL_ROLE], "build");
        assert_eq!(labels[LABEL_MANAGED], "true");
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("kiln-net-1234"));
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.memory, Some(3 << 30));
        assert_eq!(host.pids_limit, Some(DEFAULT_PIDS));
        assert_eq!(host.privileged, Some(false));
        assert!(host.binds.is_none() && host.mounts.is_none());
        assert!(
            body.env.is_none(),
            "no variables (and so no secrets) in the container config"
        );
        let net = r.network_request();
        assert_eq!(net.labels.expect("labels")[LABEL_ROLE], "network");
    }

    #[test]
    fn owners_round_trip() {
        let o = process_owner("host/x", 42, "777");
        assert_eq!(parse_owner(&o), Some(("host/x", 42, "777")));
        assert_eq!(parse_owner("garbage"), None);
    }
}
