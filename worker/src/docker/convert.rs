//! Pure conversion from a build to Docker objects: deterministic names, labels that let a later
//! process find and reap leftovers, and the container's resource limits. Unit-tested without a daemon.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use bollard::models::{ContainerCreateBody, HostConfig, Ipam, IpamConfig, NetworkCreateRequest};

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
/// On an operator network a worker created: its name in the worker config. Never reaped.
pub const LABEL_OPERATOR_NETWORK: &str = "kiln.operator-network";

/// The bridge option that leaves the host without an address on an internal network: without it
/// (Docker before 28) a build there still reaches every address of the host through the bridge's
/// gateway, though nothing beyond.
pub const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";

/// Every build network's bridge is named `kiln<11 characters of the run id>`, so one host
/// firewall rule (see `firewall`) can drop traffic between any two of them.
pub const BRIDGE_PREFIX: &str = "kiln";
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";

/// Bridge options of a network with (`internal == false`) or without egress.
fn bridge_options(internal: bool) -> Option<HashMap<String, String>> {
    internal.then(|| HashMap::from([(INHIBIT_IPV4.to_string(), "true".to_string())]))
}

/// Where the worker's Docker socket appears in a build container that may use it.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

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

/// An operator network a build container joins, with the aliases it is known by there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The name in the worker config (and the project's `vpc`).
    pub name: String,
    pub docker_network: String,
    pub aliases: Vec<String>,
    pub internal: bool,
}

/// A host directory mounted into the build container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    pub read_only: bool,
}

/// What a build gets beyond the default sandbox (its own network, no privileges, nothing of the
/// host); the worker's policy has allowed all of it. `Default` is the default sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub networks: Vec<Attachment>,
    pub privileged: bool,
    pub docker_socket: bool,
    pub host_network: bool,
    pub mounts: Vec<Mount>,
}

impl Sandbox {
    /// No egress when any attached network has none: the build's own network is then internal
    /// too, or it would be the way out.
    pub fn internal(&self) -> bool {
        self.networks.iter().any(|n| n.internal)
    }
}

/// The request that creates an operator network the worker config defines and Docker lacks.
pub fn operator_network_request(
    name: &str,
    docker_network: &str,
    internal: bool,
    subnet: Option<&str>,
) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: docker_network.to_string(),
        driver: Some("bridge".to_string()),
        internal: Some(internal),
        options: bridge_options(internal),
        labels: Some(HashMap::from([(
            LABEL_OPERATOR_NETWORK.to_string(),
            name.to_string(),
        )])),
        ipam: subnet.map(|subnet| Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
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

    /// The name of the build network's bridge on the host (at most 15 characters).
    pub fn bridge(&self) -> String {
        let id: String = self
            .run
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(11)
            .collect();
        format!("{BRIDGE_PREFIX}{id}")
    }

    /// The build's own bridge network; `internal` (no egress) when the sandbox says so.
    pub fn network_request(&self, internal: bool) -> NetworkCreateRequest {
        let mut options = bridge_options(internal).unwrap_or_default();
        options.insert(BRIDGE_NAME.to_string(), self.bridge());
        NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".to_string()),
            internal: Some(internal),
            options: Some(options),
            labels: Some(self.labels_with_role("network")),
            ..Default::default()
        }
    }

    /// The build container: the image, kept alive by a shell loop, on the build's network (the
    /// host's only when the sandbox allows it), with limits; no host paths and no privileges
    /// beyond what the sandbox allows. Build variables are not set here (they go with each exec)
    /// so secrets never appear in `docker inspect`.
    pub fn container_body(
        &self,
        image: &str,
        limits: Limits,
        sandbox: &Sandbox,
    ) -> ContainerCreateBody {
        let mut binds: Vec<String> = sandbox
            .mounts
            .iter()
            .map(|m| {
                let mode = if m.read_only { ":ro" } else { "" };
                format!("{}:{}{mode}", m.host_path, m.container_path)
            })
            .collect();
        if sandbox.docker_socket {
            binds.push(format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}"));
        }
        let network_mode = match sandbox.host_network {
            true => "host".to_string(),
            false => self.network.clone(),
        };
        // A privileged build may need setuid tools (sudo inside Docker-in-Docker images).
        let security_opt = (!sandbox.privileged).then(|| vec!["no-new-privileges".to_string()]);
        // No IPv6 without egress: the bridge's link-local address would be a way to the host.
        let sysctls = (sandbox.internal() && !sandbox.host_network).then(|| {
            HashMap::from([(
                "net.ipv6.conf.all.disable_ipv6".to_string(),
                "1".to_string(),
            )])
        });
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
            cmd: Some(vec![KEEPALIVE.to_string()]),
            labels: Some(self.labels_with_role("build")),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode),
                nano_cpus: Some((limits.cpus * 1e9) as i64),
                memory: Some(limits.memory_bytes),
                memory_swap: Some(limits.memory_bytes),
                pids_limit: Some(limits.pids),
                init: Some(true),
                privileged: Some(sandbox.privileged),
                security_opt,
                sysctls,
                binds: (!binds.is_empty()).then_some(binds),
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
        let body = r.container_body("img:1", ComputeType::Small.limits(), &Sandbox::default());
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
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        let net = r.network_request(false);
        assert_eq!(net.labels.expect("labels")[LABEL_ROLE], "network");
        assert_eq!(net.internal, Some(false));
        let options = net.options.expect("options");
        assert_eq!(options[BRIDGE_NAME], "kiln1234");
        let long = BuildResources::new("a:1", "0b7c6e1a-29f4-4d2b-9c1e-5d6f7a8b9c0d", "a", "h/1/2");
        assert_eq!(long.bridge(), "kiln0b7c6e1a29f");
        assert!(
            long.bridge().len() <= 15,
            "Linux interface names are at most 15 bytes"
        );
    }

    #[test]
    fn sandbox_exceptions_reach_the_container() {
        let r = BuildResources::new("app:1", "1", "app", "h/1/2");
        let sandbox = Sandbox {
            privileged: true,
            docker_socket: true,
            host_network: true,
            mounts: vec![Mount {
                host_path: "/srv/cache".into(),
                container_path: "/cache".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        let body = r.container_body("img", ComputeType::Small.limits(), &sandbox);
        let host = body.host_config.expect("host config");
        assert_eq!(host.privileged, Some(true));
        assert_eq!(host.security_opt, None);
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(
            host.binds,
            Some(vec![
                "/srv/cache:/cache:ro".to_string(),
                format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}")
            ])
        );
        let internal = Sandbox {
            networks: vec![Attachment {
                name: "db".into(),
                docker_network: "kiln-db".into(),
                aliases: vec![],
                internal: true,
            }],
            ..Default::default()
        };
        assert!(internal.internal() && !Sandbox::default().internal());
        let body = r.container_body("img", ComputeType::Small.limits(), &internal);
        let sysctls = body.host_config.and_then(|h| h.sysctls).expect("sysctls");
        assert_eq!(sysctls["net.ipv6.conf.all.disable_ipv6"], "1");
        let own = r.network_request(true);
        assert_eq!(own.options.expect("options")[INHIBIT_IPV4], "true");
        let net = operator_network_request("db", "kiln-db", true, Some("10.99.0.0/24"));
        assert_eq!(net.labels.expect("labels")[LABEL_OPERATOR_NETWORK], "db");
        assert_eq!(net.internal, Some(true));
        assert_eq!(net.options.as_ref().expect("options")[INHIBIT_IPV4], "true");
        let subnet = net.ipam.and_then(|i| i.config).expect("ipam")[0]
            .subnet
            .clone();
        assert_eq!(subnet.as_deref(), Some("10.99.0.0/24"));
    }

    #[test]
    fn owners_round_trip() {
        let o = process_owner("host/x", 42, "777");
        assert_eq!(parse_owner(&o), Some(("host/x", 42, "777")));
        assert_eq!(parse_owner("garbage"), None);
    }
}
