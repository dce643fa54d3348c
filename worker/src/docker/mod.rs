//! The Docker engine: container lifecycle for one build through the Docker API (bollard).
//!
//! Contract, in call order: [`Engine::provision`] (image present or pulled while the network is
//! created, then the container, then start), any number of [`Engine::upload`], [`Engine::exec`] and
//! [`Engine::download`] calls (execs of one build run one at a time), then [`Engine::teardown`].
//! `teardown` is idempotent and safe after a failed or partial `provision`; it ignores objects that
//! are already gone. [`Engine::reap_orphans`] removes what a killed process left behind, found by
//! label. Files move only as tar streams through the API, never through host bind mounts, so a
//! remote or Docker-in-Docker daemon behaves the same.

pub mod convert;
pub mod firewall;

use std::collections::HashMap;
use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{
    CreateImageOptions, DownloadFromContainerOptions, KillContainerOptions, ListContainersOptions,
    ListNetworksOptions, RemoveContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use convert::{Attachment, BuildResources, ComputeType, Limits, Mount, Sandbox};

use crate::record::NetworkInterface;

/// Engine failures. Image problems are the build's (CodeBuild's
/// `BUILD_CONTAINER_UNABLE_TO_PULL_IMAGE`); the rest are Kiln's own faults.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot reach the Docker daemon ({0}); is it running, and is DOCKER_HOST right?")]
    Connect(#[source] bollard::errors::Error),
    #[error("image {image:?} not found locally and could not be pulled: {reason}")]
    Image { image: String, reason: String },
    #[error("operator network {name:?}: {reason}")]
    Network { name: String, reason: String },
    #[error("privileged mode is not available on this Docker host: the daemon itself lacks capabilities it would grant (is it running in a restricted container?): {0}")]
    Privileged(String),
    #[error("stopped or timed out while the build was provisioned")]
    Interrupted,
    #[error("docker {op} failed: {source}")]
    Docker {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

fn docker_err(op: &'static str) -> impl Fn(bollard::errors::Error) -> EngineError {
    move |source| EngineError::Docker { op, source }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A stream of bytes from the daemon (a tar archive).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, EngineError>> + Send>>;

/// One piece of an exec's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// An exec's output, stdout and stderr apart, in the order Docker sends them.
pub type ExecOutput = Pin<Box<dyn Stream<Item = Result<ExecChunk, EngineError>> + Send>>;

/// An exec's standard input (see [`Engine::exec_with_input`]).
pub type ExecInput = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The user items run as without `run-as`: root by uid, whatever `USER` the image sets.
pub const ROOT: &str = "0";

/// One `docker exec`. It gets the container's environment and nothing more: build variables
/// travel in the state files (see `shell`), never in an exec's environment.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// A user name or uid; [`ROOT`] for root whatever the image's `USER`.
    pub user: String,
}

/// A provisioned build container: the image's environment (`NAME=value`), which the build starts
/// from, and the networks the container is on.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub image_env: Vec<String>,
    pub interfaces: Vec<NetworkInterface>,
}

/// A connection to one Docker daemon.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    /// The same daemon for copies into and out of containers (sources, artifacts), which take as
    /// long as they take: 95 s for 50,000 files on fuse-overlayfs here, where the 2-minute
    /// timeout of other calls would cut them off. The build's own deadline and stop bound them.
    transfer: Docker,
    host_cpus: Option<i64>,
    host_memory: Option<i64>,
}

/// See [`Engine::transfer`]: longer than any build may run (CodeBuild's limit is 36 hours).
const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(36 * 3600);

impl Engine {
    /// Connects to the daemon named by `DOCKER_HOST` (or the local socket) and agrees on an API
    /// version, so older daemons work.
    pub async fn connect() -> Result<Engine, EngineError> {
        let docker = Docker::connect_with_local_defaults().map_err(EngineError::Connect)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(EngineError::Connect)?;
        let info = docker.info().await.map_err(EngineError::Connect)?;
        let local = std::env::var("DOCKER_HOST").map_or(true, |h| h.starts_with("unix://"));
        if local {
            // A blocking call, once per process.
            let _ = tokio::task::spawn_blocking(firewall::isolate_build_bridges).await;
        }
        Ok(Engine {
            transfer: docker.clone().with_timeout(TRANSFER_TIMEOUT),
            docker,
            host_cpus: info.ncpu,
            host_memory: info.mem_total,
        })
    }

    /// The daemon's CPUs and memory in bytes, as it reported them when connecting.
    pub fn host_capacity(&self) -> (Option<i64>, Option<i64>) {
        (self.host_cpus, self.host_memory)
    }

    /// Uses the image when present locally, pulls it otherwise. Returns the image's environment
    /// (`NAME=value`), which the build starts from.
    pub async fn ensure_image(&self, image: &str) -> Result<Vec<String>, EngineError> {
        let image_env = |inspect: bollard::models::ImageInspect| {
            inspect.config.and_then(|c| c.env).unwrap_or_default()
        };
        match self.docker.inspect_image(image).await {
            Ok(inspect) => return Ok(image_env(inspect)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_err("image inspect")(e)),
        }
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let pulled: Result<Vec<_>, _> = self
            .docker
            .create_image(Some(options), None, None)
            .try_collect()
            .await;
        let reason = match pulled {
            Ok(_) => match self.docker.inspect_image(image).await {
                Ok(inspect) => return Ok(image_env(inspect)),
                Err(e) => e.to_string(),
            },
            Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => message,
            Err(e) => e.to_string(),
        };
        Err(EngineError::Image {
            image: image.to_string(),
            reason,
        })
    }

    /// Makes the image available (see [`Engine::ensure_image`]) while the build's network is
    /// created (none on the host network), then creates the container, attaches it to the
    /// sandbox's operator networks with their aliases, and starts it. On error, what was made is
    /// left for [`Engine::teardown`]. Cancelling `stop` ends a pull at once and otherwise takes
    /// effect between the calls ([`EngineError::Interrupted`]): a create cut off in flight could
    /// finish after the teardown, leaving its object behind.
    pub async fn provision(
        &self,
        resources: &BuildResources,
        image: &str,
        limits: Limits,
        sandbox: &Sandbox,
        stop: &CancellationToken,
    ) -> Result<Provisioned, EngineError> {
        let network = async {
            if sandbox.host_network {
                return Ok(());
            }
            self.docker
                .create_network(resources.network_request(sandbox.internal()))
                .await
                .map(|_| ())
                .map_err(docker_err("network create"))
        };
        let pull = async {
            tokio::select! {
                biased;
                _ = stop.cancelled() => Err(EngineError::Interrupted),
                ready = self.ensure_image(image) => ready,
            }
        };
        let (image_ready, network_ready) = tokio::join!(pull, network);
        network_ready?;
        let image_env = image_ready?;
        let go_on = || match stop.is_cancelled() {
            true => Err(EngineError::Interrupted),
            false => Ok(()),
        };
        go_on()?;
        let options = bollard::query_parameters::CreateContainerOptions {
            name: Some(resources.container.clone()),
            ..Default::default()
        };
        let body = resources.container_body(image, limits.fit_to(self.host_cpus), sandbox);
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_err("container create"))?;
        for attachment in &sandbox.networks {
            go_on()?;
            self.attach(&resources.container, attachment).await?;
        }
        go_on()?;
        self.docker
            .start_container(
                &resources.container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { message, .. }
                    if sandbox.privileged && message.contains("apply caps") =>
                {
                    EngineError::Privileged(message)
                }
                e => docker_err("container start")(e),
            })?;
        let interfaces = self.interfaces(resources, sandbox).await?;
        Ok(Provisioned {
            image_env,
            interfaces,
        })
    }

    async fn attach(&self, container: &str, a: &Attachment) -> Result<(), EngineError> {
        let request = bollard::models::NetworkConnectRequest {
            container: Some(container.to_string()),
            endpoint_config: Some(bollard::models::EndpointSettings {
                aliases: Some(a.aliases.clone()),
                ..Default::default()
            }),
        };
        match self
            .docker
            .connect_network(&a.docker_network, request)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(EngineError::Network {
                name: a.name.clone(),
                reason: format!(
                    "its Docker network {:?} is gone; restart the worker to create it again",
                    a.docker_network
                ),
            }),
            Err(e) => Err(docker_err("network connect")(e)),
        }
    }

    /// The container's address on its own network and on each operator network.
    async fn interfaces(
        &self,
        resources: &BuildResources,
        sandbox: &Sandbox,
    ) -> Result<Vec<NetworkInterface>, EngineError> {
        if sandbox.host_network {
            return Ok(Vec::new());
        }
        let inspect = self.inspect(&resources.container).await?;
        let on = inspect
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        let address = |docker_network: &str| {
            on.get(docker_network)
                .and_then(|e| e.ip_address.clone())
                .unwrap_or_default()
        };
        let own = NetworkInterface {
            network: String::new(),
            docker_network: resources.network.clone(),
            ip_address: address(&resources.network),
            aliases: Vec::new(),
            internal: sandbox.internal(),
        };
        let operator = sandbox.networks.iter().map(|a| NetworkInterface {
            network: a.name.clone(),
            docker_network: a.docker_network.clone(),
            ip_address: address(&a.docker_network),
            aliases: a.aliases.clone(),
            internal: a.internal,
        });
        Ok(std::iter::once(own).chain(operator).collect())
    }

    /// Makes sure an operator network exists as the worker config defines it: creates it when
    /// missing, and refuses one whose egress differs from the config (an `internal` network that
    /// is not would let builds out). Returns whether it was created.
    pub async fn ensure_operator_network(
        &self,
        name: &str,
        docker_network: &str,
        internal: bool,
        subnet: Option<&str>,
    ) -> Result<bool, EngineError> {
        let mismatch = |reason: String| EngineError::Network {
            name: name.to_string(),
            reason,
        };
        match self
            .docker
            .inspect_network(
                docker_network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(existing) => {
                let is_internal = existing.internal.unwrap_or(false);
                let host_cut_off = existing
                    .options
                    .as_ref()
                    .and_then(|o| o.get(convert::INHIBIT_IPV4))
                    .is_some_and(|v| v == "true");
                if internal && is_internal && !host_cut_off {
                    return Err(mismatch(format!(
                        "Docker network {docker_network:?} is internal but the host has an \
                         address on it, so builds could reach the host's services: remove it \
                         (`docker network rm {docker_network}`) so the worker creates it with \
                         -o {}=true",
                        convert::INHIBIT_IPV4
                    )));
                }
                if is_internal != internal {
                    return Err(mismatch(format!(
                        "Docker network {docker_network:?} exists with internal = {is_internal} \
                         but the worker config says internal = {internal}: remove it (`docker \
                         network rm {docker_network}`) so the worker creates it, or change the \
                         config"
                    )));
                }
                Ok(false)
            }
            Err(e) if is_not_found(&e) => {
                let request =
                    convert::operator_network_request(name, docker_network, internal, subnet);
                match self.docker.create_network(request).await {
                    Ok(_) => Ok(true),
                    // Another worker on this daemon created it meanwhile.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }) => Ok(false),
                    Err(e) => Err(mismatch(format!(
                        "cannot create Docker network {docker_network:?}: {e}"
                    ))),
                }
            }
            Err(e) => Err(docker_err("network inspect")(e)),
        }
    }

    /// Extracts a tar stream at `path` (which must exist) in the container.
    pub async fn upload(
        &self,
        container: &str,
        path: &str,
        tar: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<(), EngineError> {
        let options = UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        self.transfer
            .upload_to_container(container, Some(options), bollard::body_stream(tar))
            .await
            .map_err(docker_err("copy into container"))
    }

    /// A tar stream of `path` in the container (its last component is the archive's top entry).
    pub fn download(&self, container: &str, path: &str) -> ByteStream {
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        Box::pin(
            self.transfer
                .download_from_container(container, Some(options))
                .map_err(docker_err("copy from container")),
        )
    }

    /// `docker inspect` of `container`.
    async fn inspect(
        &self,
        container: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, EngineError> {
        self.docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(docker_err("container inspect"))
    }

    /// The running container's full id and the process id of its first process, as the Docker
    /// host numbers it (`None`: it is not running).
    pub async fn first_process(
        &self,
        container: &str,
    ) -> Result<Option<(String, u32)>, EngineError> {
        let inspect = self.inspect(container).await?;
        let pid = inspect
            .state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0);
        Ok(inspect.id.zip(pid))
    }

    /// Starts a command in the running container; returns its exec id and merged output.
    pub async fn exec(
        &self,
        container: &str,
        spec: ExecSpec,
    ) -> Result<(String, ExecOutput), EngineError> {
        let (id, output, _) = self.start_exec(container, spec, false).await?;
        Ok((id, output))
    }

    /// [`Engine::exec`] with the command's standard input attached: what is written to the
    /// returned writer, until it is shut down.
    pub async fn exec_with_input(
        &self,
        container: &str,
        spec: ExecSpec,
    ) -> Result<(String, ExecOutput, ExecInput), EngineError> {
        self.start_exec(container, spec, true).await
    }

    async fn start_exec(
        &self,
        container: &str,
        spec: ExecSpec,
        stdin: bool,
    ) -> Result<(String, ExecOutput, ExecInput), EngineError> {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(spec.cmd),
                    working_dir: Some(spec.working_dir),
                    user: Some(spec.user),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(docker_err("exec create"))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(docker_err("exec start"))?;
        let StartExecResults::Attached { output, input } = started else {
            // Only a detached start returns no stream, and this one is never detached.
            return Err(EngineError::Docker {
                op: "exec start",
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message: "the daemon did not attach to the exec".into(),
                },
            });
        };
        let output = output.map(|item| match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                Ok(ExecChunk::Stdout(message))
            }
            Ok(LogOutput::StdErr { message }) => Ok(ExecChunk::Stderr(message)),
            Ok(LogOutput::StdIn { message }) => Ok(ExecChunk::Stdout(message)),
            Err(e) => Err(docker_err("exec output")(e)),
        });
        Ok((created.id, Box::pin(output), input))
    }

    /// The exit code of an exec whose output has ended: Docker can report the process over a
    /// moment after its output ends, so this waits up to a second; `None` if it still runs.
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        for _ in 0..40 {
            if let Some(code) = self.exec_finished(exec_id).await? {
                return Ok(Some(code));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Ok(None)
    }

    /// The exit code of the exec once its process has ended; `None` while it runs.
    pub async fn exec_finished(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        let inspect = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(docker_err("exec inspect"))?;
        Ok(match inspect.running {
            Some(false) => Some(inspect.exit_code.unwrap_or(-1)),
            _ => None,
        })
    }

    /// Kills every process in the container (timeout, stop); teardown removes it later.
    pub async fn kill(&self, container: &str) -> Result<(), EngineError> {
        match self
            .docker
            .kill_container(container, None::<KillContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(docker_err("container kill")(e)),
        }
    }

    /// How many processes the kernel's OOM killer has killed in the container: the `oom_kill`
    /// counter of its memory cgroup (v1 `memory.oom_control`, v2 `memory.events`). Docker's own
    /// `OOMKilled` flag only covers the container's main process, not a build command.
    pub async fn oom_kills(&self, container: &str) -> Result<u64, EngineError> {
        let spec = ExecSpec {
            cmd: [
                "cat",
                "/sys/fs/cgroup/memory/memory.oom_control",
                "/sys/fs/cgroup/memory.events",
            ]
            .map(String::from)
            .to_vec(),
            working_dir: "/".to_string(),
            user: ROOT.to_string(),
        };
        let (_, output) = self.exec(container, spec).await?;
        let chunks: Vec<ExecChunk> = output.try_collect().await?;
        let text: String = chunks
            .iter()
            .filter_map(|c| match c {
                ExecChunk::Stdout(b) => Some(String::from_utf8_lossy(b).into_owned()),
                ExecChunk::Stderr(_) => None,
            })
            .collect();
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum())
    }

    /// Removes the build's container and network; objects already gone are fine. The container
    /// is first cut from the network so both removals can run at once (network removal is the
    /// slow half: the daemon rewrites its firewall rules). Then anything else labelled with the
    /// build's id goes too: a create the daemon finished after an interrupted provisioning.
    pub async fn teardown(&self, resources: &BuildResources) -> Result<(), EngineError> {
        let (container, network) = (&resources.container, &resources.network);
        let disconnect = bollard::models::NetworkDisconnectRequest {
            container: Some(container.to_string()),
            force: Some(true),
        };
        // Fails when either is already gone; the removals below settle it.
        let _ = self.docker.disconnect_network(network, disconnect).await;
        let (container_removed, network_removed) = tokio::join!(
            self.remove_container(container),
            self.remove_network(network)
        );
        let network_removed = match network_removed {
            Ok(()) => Ok(()),
            // Still in use while the container was going: try again now that it is gone.
            Err(_) => self.remove_network(network).await,
        };
        let label = format!("{}={}", convert::LABEL_RUN, resources.run);
        let swept = self.remove_labelled(&label, |_| true).await;
        container_removed
            .and(network_removed)
            .and(swept.map(|_| ()))
    }

    async fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 409: removal already in progress.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(docker_err("container remove")(e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(docker_err("network remove")(e)),
        }
    }

    /// Removes containers and networks left by Kiln processes that are gone: those whose owner
    /// label names this host and a process that no longer runs (`is_alive` decides). Returns how
    /// many objects were removed.
    pub async fn reap_orphans(
        &self,
        host: &str,
        is_alive: impl Fn(u32, &str) -> bool,
    ) -> Result<usize, EngineError> {
        let label = format!("{}=true", convert::LABEL_MANAGED);
        self.remove_labelled(&label, |labels| {
            labels
                .and_then(|l| l.get(convert::LABEL_OWNER))
                .and_then(|o| convert::parse_owner(o))
                .is_some_and(|(h, pid, ticks)| h == host && !is_alive(pid, ticks))
        })
        .await
    }

    /// Removes the containers, then the networks, that carry `label` (`key=value`) and that
    /// `pick` chooses by their labels. One failure does not stop the rest; a network still busy
    /// with a container going away is tried again once. Returns how many were removed, or the
    /// first error.
    async fn remove_labelled(
        &self,
        label: &str,
        pick: impl Fn(Option<&HashMap<String, String>>) -> bool,
    ) -> Result<usize, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .map_err(docker_err("container list"))?;
        let mut removed = 0;
        let mut first_error = None;
        for c in containers {
            if let (true, Some(id)) = (pick(c.labels.as_ref()), c.id.as_deref()) {
                match self.remove_container(id).await {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(docker_err("network list"))?;
        for n in networks {
            if let (true, Some(id)) = (pick(n.labels.as_ref()), n.id.as_deref()) {
                let mut result = self.remove_network(id).await;
                if result.is_err() {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    result = self.remove_network(id).await;
                }
                match result {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }
}
