//! One connection to the coordinator: `Hello`, `Welcome`, then the loop that takes assignments,
//! applies the coordinator's answers, heartbeats, and writes the builds' logs and reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_proto::v1::{
    coordinator_message::Kind as In, worker_message::Kind as Out, Assignment, Declined, Draining,
    Hello, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::build::{run_assignment, BuildHandles};
use super::outbox::LogOutbox;
use super::state::message;
use super::{Agent, Finished};

/// How long the coordinator may take to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How often partial log chunks go out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How long a drained agent waits for the coordinator to end the stream.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The heartbeat interval when `Welcome` names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How a session ended without an error.
pub enum End {
    /// Draining, and nothing left to run or report: the agent exits.
    Drained,
    /// The stream closed; `welcomed` when it had got as far as `Welcome`.
    Lost { welcomed: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Rpc(Box<tonic::Status>),
    #[error("the coordinator did not answer Hello with Welcome within {0:?}")]
    NoWelcome(Duration),
    #[error("the coordinator's first message was not Welcome")]
    UnexpectedFirstMessage,
}

impl From<tonic::Status> for SessionError {
    fn from(status: tonic::Status) -> Self {
        SessionError::Rpc(Box::new(status))
    }
}

pub async fn run(agent: &mut Agent) -> Result<End, SessionError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hello = Hello {
        worker_id: agent.config.worker_id.clone(),
        labels: agent.config.labels.clone().into_iter().collect(),
        slots: agent.config.slots,
        cpus: agent.cpus,
        memory_bytes: agent.memory_bytes,
        running: agent.builds.leases(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        policy: Some(agent.config.policy.clone()),
    };
    // The receiver lives in the request stream until the call ends, so these sends succeed.
    let _ = tx.send(message(Out::Hello(hello)));
    if agent.draining {
        let _ = tx.send(message(Out::Draining(Draining {})));
    }
    // Both the call's response headers and `Welcome` must come in time: a coordinator that
    // accepts the connection and says nothing must not hold the agent forever.
    let call = agent
        .client
        .connect_worker(UnboundedReceiverStream::new(rx));
    let mut inbound = tokio::time::timeout(WELCOME_TIMEOUT, call)
        .await
        .map_err(|_| SessionError::NoWelcome(WELCOME_TIMEOUT))??
        .into_inner();
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Err(_) => return Err(SessionError::NoWelcome(WELCOME_TIMEOUT)),
        Ok(Err(status)) => return Err(status.into()),
        Ok(Ok(None)) => return Ok(End::Lost { welcomed: false }),
        Ok(Ok(Some(m))) => match m.kind {
            Some(In::Welcome(w)) => w,
            _ => return Err(SessionError::UnexpectedFirstMessage),
        },
    };
    tracing::info!(
        worker_id = agent.config.worker_id,
        "connected to the coordinator"
    );
    agent.builds.on_connected();
    agent.builds.on_welcome(&welcome.resumed);
    let every = match welcome.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(ms.max(100)),
    };
    let mut heartbeat = tokio::time::interval(every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let log_ready = agent.log_ready.clone();
    loop {
        agent.collect_finished();
        if agent.draining && agent.builds.is_empty() {
            // Half-close and let the coordinator end the call, so what was queued (`Draining`,
            // the last reports' acks) is delivered rather than cut off.
            drop(tx);
            let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closed).await;
            return Ok(End::Drained);
        }
        let mut outgoing = Vec::new();
        tokio::select! {
            _ = agent.drain.cancelled(), if !agent.draining => {
                start_draining(agent, &mut outgoing);
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(kind) = m.kind {
                        handle(agent, kind, &mut outgoing);
                    }
                }
                Ok(None) => return Ok(End::Lost { welcomed: true }),
                Err(status) => {
                    tracing::warn!(error = %status, "the coordinator stream failed");
                    return Ok(End::Lost { welcomed: true });
                }
            },
            Some(f) = agent.finished_rx.recv() => {
                agent.builds.on_finished(&f.build_id, f.epoch, f.report);
            }
            _ = heartbeat.tick() => outgoing.push(agent.builds.heartbeat()),
            _ = flush.tick() => {}
            _ = log_ready.notified() => {}
        }
        outgoing.extend(agent.builds.outgoing(Instant::now()));
        for m in outgoing {
            if tx.send(m).is_err() {
                return Ok(End::Lost { welcomed: true });
            }
        }
    }
}

fn start_draining(agent: &mut Agent, outgoing: &mut Vec<WorkerMessage>) {
    if !agent.draining {
        tracing::info!(
            worker_id = agent.config.worker_id,
            "draining: no new builds"
        );
        agent.draining = true;
        outgoing.push(message(Out::Draining(Draining {})));
    }
}

fn handle(agent: &mut Agent, kind: In, outgoing: &mut Vec<WorkerMessage>) {
    match kind {
        In::Assignment(a) => assign(agent, a, outgoing),
        In::Cancel(c) => {
            tracing::info!(
                build_id = c.build_id,
                reason = c.reason,
                "stopping the build"
            );
            agent.builds.on_cancel(&c.build_id, c.epoch);
        }
        In::Drain(_) => start_draining(agent, outgoing),
        In::LogAck(ack) => agent
            .builds
            .on_log_ack(&ack.build_id, ack.epoch, ack.next_seq),
        In::CompletedAck(ack) => agent.builds.on_completed_ack(&ack.build_id, ack.epoch),
        In::Reject(r) => agent.builds.abandon(&r.build_id, r.epoch, &r.reason),
        In::Welcome(w) => {
            // A second Welcome on one stream: take its verdicts, as after a reconnect.
            agent.builds.on_welcome(&w.resumed);
        }
    }
}

/// Starts a build, unless the agent is draining or full, or still holds an earlier attempt of the
/// build: then it declines, and the coordinator queues the build again at once.
fn assign(agent: &mut Agent, a: Assignment, outgoing: &mut Vec<WorkerMessage>) {
    let (build_id, epoch) = (a.build_id.clone(), a.epoch);
    let mut decline = |reason: &str| {
        tracing::warn!(build_id, epoch, reason, "assignment declined");
        outgoing.push(message(Out::Declined(Declined {
            build_id: build_id.clone(),
            epoch,
            reason: reason.to_string(),
        })));
    };
    if agent.draining {
        return decline("the worker is draining");
    }
    if agent.builds.free_slots() == 0 {
        return decline("the worker has no free slot");
    }
    let ready = agent.log_ready.clone();
    let limits = Agent::outbox_limits();
    let Some(tracked) = agent
        .builds
        .insert(&build_id, epoch, |stop| LogOutbox::new(limits, ready, stop))
    else {
        return decline("the worker still holds an earlier attempt of the build");
    };
    let handles = BuildHandles {
        outbox: tracked.outbox.clone(),
        stop: tracked.stop.clone(),
        abandon: tracked.abandon.clone(),
    };
    tracing::info!(build_id, epoch, project = a.project_name, "build assigned");
    let context = Arc::clone(&agent.context);
    let finished = agent.finished_tx.clone();
    let span = tracing::info_span!("build", build_id = %build_id, epoch);
    agent.tasks.spawn(tracing::Instrument::instrument(
        async move {
            let report = run_assignment(context, a, handles).await;
            tracing::info!(
                status = report
                    .as_ref()
                    .map_or("abandoned", |r| r.build_status.as_str()),
                "build finished"
            );
            let _ = finished.send(Finished {
                build_id,
                epoch,
                report,
            });
        },
        span,
    ));
}
