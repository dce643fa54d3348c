//! The worker agent (`kiln worker`): holds one `WorkerService.ConnectWorker` stream to a
//! coordinator, runs the builds it is assigned with the phase runner, and reports on them, as the
//! lifecycle above the service in `proto/kiln/v1/worker.proto` describes.
//!
//! Decisions:
//! - One control stream at a time, reconnected forever with jittered exponential backoff
//!   ([`backoff`]: 100 ms doubling to 5 s, ±50%) until the agent is drained; builds keep running
//!   while it is down, their logs wait in their outboxes (up to the backpressure limit) and their
//!   reports are sent after the next `Welcome`.
//! - The session loop (`session.rs`) is the only writer of the stream: every ~100 ms, or when a
//!   whole log chunk is ready, it takes each build's ready chunks and phase starts, then the
//!   reports whose log is fully acknowledged (see `state.rs`). One writer keeps a build's
//!   messages in order without per-build tasks racing for the stream; the stream's channel is
//!   unbounded, but what goes into it is bounded by the outboxes' limits.
//! - Source fetches, artifact uploads and build caches use their own RPCs on the same lazily
//!   connected channel; fetches and uploads are retried on transient errors (a cache that cannot
//!   be reached is only logged); an upload the coordinator refuses for its epoch
//!   (FAILED_PRECONDITION) drops the build's report.
//! - Assignments that arrive while draining, with no free slot, or for a build whose earlier
//!   attempt is still tracked are not run: the agent answers `Declined`, and the coordinator
//!   queues the build again at once without counting an attempt.
//! - At start, Docker objects left by dead Kiln processes on this host are reaped (in the
//!   background: they are not this agent's builds; a drained agent waits for the reaping to end).

mod assignment;
mod build;
mod cache;
mod checkout;
mod outbox;
mod session;
mod state;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use assignment::JobDefaults;

use crate::docker::Engine;
use crate::secrets::SecretStore;
use build::BuildContext;
use outbox::OutboxLimits;
use state::Builds;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's worker endpoint, `http://host:port` (or `https://`).
    pub coordinator: String,
    /// Sent as `authorization: Bearer <token>` when set.
    pub join_token: Option<String>,
    /// Stable across restarts of this worker (the host name by default).
    pub worker_id: String,
    pub labels: BTreeMap<String, String>,
    /// Builds run at once.
    pub slots: u32,
    /// The image of builds that name none.
    pub default_image: String,
    /// Resolves builds' PARAMETER_STORE / SECRETS_MANAGER variables.
    pub secrets: SecretStore,
    /// The owner label of the Docker objects this process creates (`crate::host::owner`).
    pub owner: String,
    /// The operator's networks and sandbox exceptions; the networks are created when missing.
    pub policy: kiln_proto::v1::SandboxPolicy,
    /// The process limit of every build container.
    pub pids_limit: i64,
}

/// Why the agent could not run at all (connection trouble is retried, never returned).
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid coordinator address {address:?}: {reason}")]
    Coordinator { address: String, reason: String },
    #[error("the join token cannot be sent as a header: it must be visible ASCII")]
    JoinToken,
    #[error("--slots must be at least 1")]
    NoSlots,
    #[error(transparent)]
    Network(crate::docker::EngineError),
}

/// Adds the join token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The coordinator's WorkerService.
pub type Client = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

/// A build task's end: its report, or `None` when it gave up.
struct Finished {
    build_id: String,
    epoch: u64,
    report: Option<kiln_proto::v1::Completed>,
}

/// Everything the agent keeps across connections.
struct Agent {
    config: AgentConfig,
    client: Client,
    context: Arc<BuildContext>,
    builds: Builds,
    tasks: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    /// Wakes the session when a log chunk is ready.
    log_ready: Arc<Notify>,
    drain: CancellationToken,
    /// Drained by the caller or by the coordinator's `Drain`.
    draining: bool,
    cpus: u32,
    memory_bytes: u64,
}

/// Runs the agent until `drain` is cancelled (or the coordinator sends `Drain`) and every build
/// it holds has finished and been reported.
pub async fn run_agent(
    config: AgentConfig,
    engine: Engine,
    drain: CancellationToken,
) -> Result<(), AgentError> {
    if config.slots == 0 {
        return Err(AgentError::NoSlots);
    }
    let client = connect_lazily(&config)?;
    for n in &config.policy.networks {
        let subnet = Some(n.subnet.as_str()).filter(|s| !s.is_empty());
        let created = engine
            .ensure_operator_network(&n.name, &n.docker_network, n.internal, subnet)
            .await
            .map_err(AgentError::Network)?;
        if created {
            tracing::info!(
                network = n.name,
                docker_network = n.docker_network,
                "created operator network"
            );
        }
    }
    let reaper = {
        let engine = engine.clone();
        tokio::spawn(async move {
            match engine
                .reap_orphans(&crate::host::hostname(), crate::host::is_alive)
                .await
            {
                Ok(0) => {}
                Ok(reaped) => {
                    tracing::info!(reaped, "removed objects left by earlier kiln processes")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove objects left by earlier kiln processes")
                }
            }
        })
    };
    let (cpus, memory_bytes) = capacity(&engine);
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let context = Arc::new(BuildContext {
        engine,
        client: client.clone(),
        defaults: JobDefaults {
            image: config.default_image.clone(),
            secrets: config.secrets.clone(),
            policy: config.policy.clone(),
            pids_limit: config.pids_limit,
        },
        owner: config.owner.clone(),
    });
    let mut agent = Agent {
        builds: Builds::new(config.slots),
        config,
        client,
        context,
        tasks: JoinSet::new(),
        finished_tx,
        finished_rx,
        log_ready: Arc::new(Notify::new()),
        drain,
        draining: false,
        cpus,
        memory_bytes,
    };
    agent.run().await;
    // A drained agent leaves nothing behind, not even a half-done reaping.
    if let Err(e) = reaper.await {
        tracing::warn!(error = %e, "the reaper task failed");
    }
    Ok(())
}

impl Agent {
    async fn run(&mut self) {
        let mut attempt: u32 = 0;
        loop {
            self.draining |= self.drain.is_cancelled();
            self.collect_finished();
            if self.draining && self.builds.is_empty() {
                break;
            }
            match session::run(self).await {
                Ok(session::End::Drained) => break,
                Ok(session::End::Lost { welcomed }) => {
                    tracing::warn!(
                        worker_id = self.config.worker_id,
                        "the coordinator stream ended"
                    );
                    if welcomed {
                        attempt = 0;
                    }
                }
                Err(e) => {
                    tracing::warn!(worker_id = self.config.worker_id, error = %e, "no connection to the coordinator")
                }
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.drain.cancelled(), if !self.draining => {}
            }
        }
        // Tasks of abandoned builds may still be tearing down their containers.
        while self.tasks.join_next().await.is_some() {}
        tracing::info!(worker_id = self.config.worker_id, "drained");
    }

    /// Applies the ends of build tasks that came in while no session ran.
    fn collect_finished(&mut self) {
        while let Ok(f) = self.finished_rx.try_recv() {
            self.builds.on_finished(&f.build_id, f.epoch, f.report);
        }
        while self.tasks.try_join_next().is_some() {}
    }

    fn outbox_limits() -> OutboxLimits {
        OutboxLimits::default()
    }
}

fn connect_lazily(config: &AgentConfig) -> Result<Client, AgentError> {
    let bad = |reason: String| AgentError::Coordinator {
        address: config.coordinator.clone(),
        reason,
    };
    let endpoint = Endpoint::from_shared(config.coordinator.clone())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let token = match &config.join_token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| AgentError::JoinToken)?,
        ),
        None => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(
        WorkerServiceClient::with_interceptor(channel, BearerToken(token))
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// CPUs and memory for `Hello`: the daemon's numbers, else this host's.
fn capacity(engine: &Engine) -> (u32, u64) {
    let (cpus, memory) = engine.host_capacity();
    let cpus = cpus
        .and_then(|c| u32::try_from(c).ok())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1);
    let memory = memory
        .and_then(|m| u64::try_from(m).ok())
        .or_else(host_memory)
        .unwrap_or(0);
    (cpus, memory)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The wait before reconnect attempt `attempt` (from 0): 100 ms doubling up to 5 s, then ±50%
/// jitter so a fleet of workers does not reconnect in step after a coordinator restart. The
/// randomness comes from a v4 uuid (no extra crate for a jitter).
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(Duration::from_secs(5));
    let random = uuid::Uuid::new_v4().as_u128() as u16;
    // 0.5 ..= 1.5 of the base.
    base.mul_f64(0.5 + f64::from(random) / f64::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_five_seconds_with_jitter() {
        for _ in 0..50 {
            let first = backoff(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
            let late = backoff(30);
            assert!(late >= Duration::from_millis(2500) && late <= Duration::from_millis(7500));
        }
        let third: Vec<Duration> = (0..20).map(|_| backoff(2)).collect();
        assert!(third.iter().any(|d| *d != third[0]), "jittered");
    }

    #[test]
    fn bad_settings_are_refused() {
        let config = AgentConfig {
            coordinator: "not a url".into(),
            join_token: None,
            worker_id: "w".into(),
            labels: BTreeMap::new(),
            slots: 1,
            default_image: "i".into(),
            secrets: SecretStore::default(),
            owner: "o".into(),
            policy: Default::default(),
            pids_limit: crate::docker::convert::DEFAULT_PIDS,
        };
        assert!(matches!(
            connect_lazily(&config),
            Err(AgentError::Coordinator { .. })
        ));
        let config = AgentConfig {
            coordinator: "http://127.0.0.1:1".into(),
            join_token: Some("bad\ntoken".into()),
            ..config
        };
        assert!(matches!(
            connect_lazily(&config),
            Err(AgentError::JoinToken)
        ));
    }
}
