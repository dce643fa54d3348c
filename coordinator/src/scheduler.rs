//! The coordinator's background loops: the dispatcher (queued builds → this coordinator's
//! workers, priority then FIFO, by labels and free slots, within project limits) and the sweeper
//! (expired leases → re-queue or FAULT, queued timeouts, stop requests and lost leases pushed to
//! this coordinator's workers).
//!
//! Nothing here waits on a worker: messages to a worker's stream are `try_send`s, and a worker
//! whose stream is full is taken as stalled (it gets no more builds; a build that could not be
//! handed to it goes back to the queue without using up an attempt).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1::{coordinator_message, Cancel, CoordinatorMessage, Lease};
use tokio_util::sync::CancellationToken;

use crate::core::{close_phase, end_build, epoch, ms, now_ms, open_phase, record, Core};
use crate::store::{QueueChange, StateStore, Updated};

/// How far down the queue one dispatch round looks.
const DISPATCH_WINDOW: usize = 512;
/// How often the loops run when nothing wakes them.
const TICK: Duration = Duration::from_millis(200);

/// Runs the dispatcher until `stop`.
pub async fn dispatcher<S: StateStore>(core: Arc<Core<S>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = core.dispatch.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        // Projects found at their limit are passed over until the next wake-up, so builds of
        // other projects behind them are not held up.
        let mut full = HashSet::new();
        loop {
            match dispatch_round(&core, &mut full).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch round failed");
                    break;
                }
            }
        }
    }
}

/// One pass over the head of the queue; returns whether another pass may assign more (something
/// was assigned, or a project was found full). Workers are chosen first (reserving their slots),
/// then every claim is written at once, so the store can commit them together.
async fn dispatch_round<S: StateStore>(
    core: &Core<S>,
    full: &mut HashSet<String>,
) -> Result<bool, tonic::Status> {
    let free: u32 = core.workers().values().map(|w| w.free()).sum();
    if free == 0 {
        return Ok(false);
    }
    let ids = core
        .store
        .queue_head(DISPATCH_WINDOW.min(free as usize * 8 + 32))
        .await
        .map_err(crate::core::store_error)?;
    if ids.is_empty() {
        return Ok(false);
    }
    let rows = core
        .store
        .get_builds(&ids)
        .await
        .map_err(crate::core::store_error)?;
    let mut claims = Vec::new();
    let mut reasons = Vec::new();
    // Claims per limited project in this round: no more than its limit are tried.
    let mut tried: HashMap<String, u32> = HashMap::new();
    for row in rows.into_iter().flatten() {
        // The queue was read before the rows: another coordinator may have claimed one since.
        // Its row is current, so a claim of it would pass the compare-and-set and run it twice.
        if record(&row).build_status != "QUEUED" || row.lease.is_some() {
            continue;
        }
        let project = &record(&row).project_name;
        if full.contains(project) {
            continue;
        }
        let limit = row.concurrent_build_limit;
        if limit > 0 {
            let n = tried.entry(project.clone()).or_default();
            if *n >= limit {
                continue;
            }
            *n += 1;
        }
        match reserve(core, &row) {
            Ok(reserved) => claims.push(claim(core, row, reserved)),
            Err(reason) if !reason.is_empty() && record(&row).queued_reason != reason => {
                reasons.push((record(&row).id.clone(), reason));
            }
            Err(_) => {}
        }
    }
    for (id, reason) in reasons {
        note_reason(core, &id, &reason).await;
    }
    let mut again = false;
    for result in futures_util::future::join_all(claims).await {
        match result? {
            Claimed::Assigned => again = true,
            Claimed::ProjectFull(project) => again |= full.insert(project),
            Claimed::Lost => {}
        }
    }
    Ok(again)
}

/// A worker slot held for a build while its claim is written.
struct Reserved {
    worker_id: String,
    conn: u64,
    epoch: u64,
}

enum Claimed {
    Assigned,
    ProjectFull(String),
    Lost,
}

/// Picks the worker with the most free slots among those with the build's labels whose policy
/// admits it, and holds a slot there; the error is why none can (empty when they are only busy).
fn reserve<S: StateStore>(
    core: &Core<S>,
    row: &kiln_proto::v1::StoredBuild,
) -> Result<Reserved, String> {
    let mut workers = core.workers();
    let best = workers
        .iter()
        .filter(|(_, w)| w.free() > 0 && w.matches(&row.worker_labels) && w.accepts(row).is_ok())
        .max_by_key(|(id, w)| (w.free(), std::cmp::Reverse((*id).clone())))
        .map(|(id, _)| id.clone());
    let Some(worker_id) = best else {
        if !workers.values().any(|w| w.matches(&row.worker_labels)) {
            return Err(no_worker_reason(&row.worker_labels));
        }
        return match crate::core::admission(workers.values(), row) {
            Ok(()) => Err(String::new()),
            Err(refusal) => Err(format!(
                "waiting: no connected worker may run it: {refusal}"
            )),
        };
    };
    let epoch = epoch(row) + 1;
    let w = workers.get_mut(&worker_id).ok_or_else(String::new)?;
    w.running.insert(record(row).id.clone(), epoch);
    Ok(Reserved {
        worker_id,
        conn: w.conn,
        epoch,
    })
}

/// Claims a build for the reserved worker (compare-and-set with the new epoch) and pushes the
/// assignment; gives the slot back when the claim fails.
async fn claim<S: StateStore>(
    core: &Core<S>,
    mut row: kiln_proto::v1::StoredBuild,
    reserved: Reserved,
) -> Result<Claimed, tonic::Status> {
    let now = now_ms();
    let limit = row.concurrent_build_limit;
    let project = record(&row).project_name.clone();
    let id = record(&row).id.clone();
    close_phase(&mut row, "SUCCEEDED", None, now);
    open_phase(&mut row, "PROVISIONING", now);
    row.lease = Some(Lease {
        worker_id: reserved.worker_id.clone(),
        epoch: reserved.epoch,
        expires_ms: now + ms(core.config.lease_ttl),
    });
    let mut assignment = row.spec.clone().unwrap_or_default();
    assignment.epoch = reserved.epoch;
    if let Some(build) = row.build.as_mut() {
        build.build_status = "IN_PROGRESS".to_string();
        build.worker_id = reserved.worker_id.clone();
        build.attempt += 1;
        build.queued_reason.clear();
        assignment.attempt = build.attempt;
        assignment.build_number = build.build_number;
    }
    row.spec = Some(assignment.clone());
    let outcome = core
        .store
        .update_build(row, QueueChange::Claim { limit })
        .await;
    let release = || {
        if let Some(w) = core.workers().get_mut(&reserved.worker_id) {
            w.release(&id, reserved.epoch);
        }
    };
    match outcome {
        Ok(Updated::Done(_)) => {}
        Ok(Updated::LimitReached) => {
            release();
            let reason = format!(
                "waiting: project {project} already runs {limit} builds (its concurrent build limit)"
            );
            note_reason(core, &id, &reason).await;
            return Ok(Claimed::ProjectFull(project));
        }
        Ok(Updated::Conflict | Updated::Missing) => {
            release();
            return Ok(Claimed::Lost);
        }
        Err(e) => {
            release();
            return Err(crate::core::store_error(e));
        }
    }
    core.changed();
    let message = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::Assignment(assignment)),
    };
    if !send_to(core, &reserved.worker_id, reserved.conn, message) {
        // The worker went away or stopped reading: give the build back at once.
        requeue(
            core,
            &id,
            reserved.epoch,
            "it could not be handed to its worker",
            Lost::Undelivered,
        )
        .await;
        return Ok(Claimed::Lost);
    }
    Ok(Claimed::Assigned)
}

/// Sends to one worker connection without waiting; a full stream marks the worker stalled (no
/// more builds for it until it reconnects). Returns whether the message was queued.
fn send_to<S: StateStore>(
    core: &Core<S>,
    worker: &str,
    conn: u64,
    message: CoordinatorMessage,
) -> bool {
    let mut workers = core.workers();
    let Some(w) = workers.get_mut(worker).filter(|w| w.conn == conn) else {
        return false;
    };
    match w.tx.try_send(Ok(message)) {
        Ok(()) => true,
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            if !w.draining {
                tracing::warn!(
                    worker,
                    "worker is not reading its stream; it gets no more builds"
                );
            }
            w.draining = true;
            false
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// How a build's lease was lost.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// No heartbeat renewed it in time (the sweeper checks it is still expired): the attempt
    /// counts.
    Expired,
    /// The assignment never reached the worker: the attempt does not count.
    Undelivered,
}

/// Puts a build whose lease (with `held_epoch`) is lost back in the queue, or ends it FAULT
/// after the attempt limit, or STOPPED when a stop was requested.
pub async fn requeue<S: StateStore>(
    core: &Core<S>,
    id: &str,
    held_epoch: u64,
    why: &str,
    lost: Lost,
) {
    let max = core.config.max_attempts;
    let result = core
        .update(id, |row| {
            if epoch(row) != held_epoch || record(row).build_complete {
                return None;
            }
            let now = now_ms();
            let lease = row.lease.as_ref()?;
            if lost == Lost::Expired && lease.expires_ms >= now {
                return None; // renewed since the sweep looked
            }
            let worker = lease.worker_id.clone();
            if record(row).stop_requested {
                // StopBuild was asked before the worker was lost: the build ends as asked.
                let message = format!(
                    "Build was stopped (worker {worker} was lost ({why}) before it confirmed)"
                );
                end_build(row, "STOPPED", "BUILD_STOPPED", &message, now);
                return Some(QueueChange::Finish);
            }
            let mut attempt = record(row).attempt;
            if lost == Lost::Undelivered {
                attempt = attempt.saturating_sub(1);
            }
            if attempt >= max {
                let message = format!(
                    "worker {worker} was lost ({why}) on attempt {attempt} of {max}; giving up"
                );
                end_build(row, "FAULT", "WORKER_LOST", &message, now);
                return Some(QueueChange::Finish);
            }
            let context = kiln_proto::v1::PhaseContext {
                status_code: "WORKER_LOST".to_string(),
                message: format!("worker {worker} was lost ({why}); the build is queued again"),
            };
            close_phase(row, "FAULT", Some(context), now);
            open_phase(row, "QUEUED", now);
            row.lease = None;
            if let Some(b) = row.build.as_mut() {
                b.attempt = attempt;
                b.build_status = "QUEUED".to_string();
                b.queued_reason = format!("re-queued: worker {worker} was lost ({why})");
            }
            Some(QueueChange::Enqueue)
        })
        .await;
    match result {
        Ok(Some(_)) => core.dispatch.notify_one(),
        Ok(None) => {}
        Err(e) => tracing::warn!(build = id, error = %e, "could not re-queue a build"),
    }
}

async fn note_reason<S: StateStore>(core: &Core<S>, id: &str, reason: &str) {
    let result = core
        .update(id, |row| {
            let b = row.build.as_mut()?;
            if b.build_status != "QUEUED" || b.queued_reason == reason {
                return None;
            }
            b.queued_reason = reason.to_string();
            Some(QueueChange::Keep)
        })
        .await;
    if let Err(e) = result {
        tracing::debug!(build = id, error = %e, "could not note why a build waits");
    }
}

fn no_worker_reason(labels: &std::collections::HashMap<String, String>) -> String {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    wanted.sort();
    format!(
        "waiting: no connected worker has the labels {} (start one with `kiln worker --label ...`)",
        wanted.join(", ")
    )
}

/// Runs the sweeper until `stop`.
pub async fn sweeper<S: StateStore>(core: Arc<Core<S>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if let Err(e) = sweep(&core).await {
            tracing::warn!(error = %e, "sweep failed");
        }
    }
}

async fn sweep<S: StateStore>(core: &Core<S>) -> Result<(), tonic::Status> {
    let now = now_ms();
    let err = crate::core::store_error;
    // Leases: after a restart, workers get one TTL to reconnect before their builds move.
    if core.started.elapsed() >= core.config.lease_ttl {
        let active = core.store.active_builds().await.map_err(err)?;
        let rows = core.store.get_builds(&active).await.map_err(err)?;
        for row in rows.into_iter().flatten() {
            if let Some(lease) = &row.lease {
                if lease.expires_ms < now {
                    let silent = now - lease.expires_ms + ms(core.config.lease_ttl);
                    let why = format!("no heartbeat for {silent} ms");
                    requeue(core, &record(&row).id, lease.epoch, &why, Lost::Expired).await;
                }
            }
        }
    }
    for id in core.store.queue_expired(now, 256).await.map_err(err)? {
        let result = core
            .update(&id, |row| {
                let b = record(row);
                if b.build_complete || row.lease.is_some() || row.queued_deadline_ms > now {
                    return None;
                }
                let message = format!(
                    "the build waited longer than its queued timeout of {} minutes",
                    b.queued_timeout_in_minutes
                );
                end_build(row, "TIMED_OUT", "QUEUED_TIMEOUT", &message, now);
                Some(QueueChange::Finish)
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(build = id, error = %e, "could not time out a queued build");
        }
    }
    push_cancels(core).await
}

/// Tells this coordinator's workers about builds they must stop: a StopBuild (possibly through
/// another coordinator) or a lease that moved on (re-queued, re-assigned or ended elsewhere), and
/// stops counting the latter against their slots.
async fn push_cancels<S: StateStore>(core: &Core<S>) -> Result<(), tonic::Status> {
    let held: Vec<(String, String, u64)> = core
        .workers()
        .iter()
        .flat_map(|(w, c)| c.running.iter().map(|(b, e)| (w.clone(), b.clone(), *e)))
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = held.iter().map(|(_, b, _)| b.clone()).collect();
    let rows = core
        .store
        .get_builds(&ids)
        .await
        .map_err(crate::core::store_error)?;
    for ((worker, id, held_epoch), row) in held.into_iter().zip(rows) {
        let moved_on = match &row {
            None => true,
            // A claim being written: the stored epoch has not caught up yet.
            Some(r) if epoch(r) < held_epoch => continue,
            Some(r) => {
                epoch(r) > held_epoch
                    || record(r).build_complete
                    || r.lease.as_ref().is_none_or(|l| l.worker_id != worker)
            }
        };
        let stop = row.as_ref().is_some_and(|r| record(r).stop_requested);
        match (moved_on, stop) {
            (true, _) => {
                send_cancel(
                    core,
                    &worker,
                    &id,
                    held_epoch,
                    "the build moved on or ended",
                );
                if let Some(w) = core.workers().get_mut(&worker) {
                    w.release(&id, held_epoch);
                }
            }
            (false, true) => send_cancel(core, &worker, &id, held_epoch, "StopBuild"),
            (false, false) => {}
        }
    }
    Ok(())
}

/// Sends one Cancel for an attempt to the worker holding it (once per attempt).
pub fn send_cancel<S: StateStore>(
    core: &Core<S>,
    worker: &str,
    id: &str,
    epoch: u64,
    reason: &str,
) {
    let conn = {
        let workers = core.workers();
        let Some(w) = workers.get(worker) else {
            return;
        };
        if w.cancelled.contains(&(id.to_string(), epoch)) {
            return;
        }
        w.conn
    };
    let message = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::Cancel(Cancel {
            build_id: id.to_string(),
            epoch,
            reason: reason.to_string(),
        })),
    };
    if send_to(core, worker, conn, message) {
        if let Some(w) = core.workers().get_mut(worker) {
            w.cancelled.insert((id.to_string(), epoch));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::Blobs;
    use crate::config::CoordinatorConfig;
    use crate::store::{Created, EmbeddedStore};
    use kiln_proto::v1::{Build, StoredBuild};

    fn core_in(dir: &std::path::Path) -> Arc<Core<EmbeddedStore>> {
        let store = EmbeddedStore::open(&dir.join("state")).expect("store");
        let config = CoordinatorConfig::default().finish(dir).expect("config");
        let blobs = Blobs::open(dir, &config.store_config().expect("store")).expect("blobs");
        Core::new(store, blobs, config)
    }

    fn worker(
        labels: std::collections::BTreeMap<String, String>,
        slots: u32,
        tx: crate::core::WorkerTx,
    ) -> crate::core::WorkerConn {
        crate::core::WorkerConn {
            conn: 1,
            labels,
            policy: Default::default(),
            slots,
            draining: false,
            tx,
            running: Default::default(),
            cancelled: Default::default(),
            log_bytes: Default::default(),
        }
    }

    fn queued(project: &str, deadline_ms: i64) -> StoredBuild {
        let id = format!("{project}:{}", uuid::Uuid::new_v4());
        StoredBuild {
            spec: Some(kiln_proto::v1::Assignment {
                build_id: id.clone(),
                project_name: project.to_string(),
                ..Default::default()
            }),
            build: Some(Build {
                id,
                project_name: project.to_string(),
                build_status: "QUEUED".to_string(),
                current_phase: "QUEUED".to_string(),
                queued_timeout_in_minutes: 1,
                ..Build::default()
            }),
            queued_deadline_ms: deadline_ms,
            ..StoredBuild::default()
        }
    }

    /// Stores a new queued build of project `p`; returns its id.
    async fn create_queued(core: &Core<EmbeddedStore>, row: StoredBuild) -> String {
        let Created::New(row) = core.store.create_build(row, None).await.expect("create") else {
            panic!("a new build");
        };
        record(&row).id.clone()
    }

    #[tokio::test]
    async fn queued_builds_past_their_timeout_end_timed_out_and_leave_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_in(dir.path());
        let mut ids = Vec::new();
        for deadline in [now_ms() - 1, now_ms() + 3_600_000] {
            let Created::New(row) = core
                .store
                .create_build(queued("p", deadline), None)
                .await
                .expect("create")
            else {
                panic!("a new build");
            };
            ids.push(record(&row).id.clone());
        }
        sweep(&core).await.expect("sweep");
        let late = core.build(&ids[0]).await.expect("late");
        assert_eq!(record(&late).build_status, "TIMED_OUT");
        assert!(record(&late).build_complete);
        let context = &record(&late).phases.last().map(|p| p.phase_type.clone());
        assert_eq!(context.as_deref(), Some("COMPLETED"));
        let on_time = core.build(&ids[1]).await.expect("on time");
        assert_eq!(record(&on_time).build_status, "QUEUED");
        let head = core.store.queue_head(10).await.expect("queue");
        assert_eq!(head, vec![ids[1].clone()]);
    }

    #[tokio::test]
    async fn a_build_no_worker_can_run_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_in(dir.path());
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let labels = [("os".to_string(), "linux".to_string())].into();
        core.workers().insert("w".into(), worker(labels, 1, tx));
        let mut row = queued("p", now_ms() + 60_000);
        row.worker_labels = [("gpu".to_string(), "yes".to_string())].into();
        let Created::New(row) = core.store.create_build(row, None).await.expect("create") else {
            panic!("a new build");
        };
        assert!(
            !dispatch_round(&core, &mut HashSet::new())
                .await
                .expect("round"),
            "nothing assigned"
        );
        let after = core.build(&record(&row).id).await.expect("build");
        assert!(
            record(&after)
                .queued_reason
                .contains("no connected worker has the labels gpu=yes"),
            "{}",
            record(&after).queued_reason
        );
    }

    #[tokio::test]
    async fn a_build_no_worker_policy_admits_waits_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_in(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let mut w = worker(Default::default(), 1, tx);
        w.policy.networks.push(kiln_proto::v1::OfferedNetwork {
            name: "db".into(),
            docker_network: "kiln-db".into(),
            projects: vec!["other".into()],
            ..Default::default()
        });
        core.workers().insert("w".into(), w);
        let mut row = queued("p", now_ms() + 60_000);
        if let Some(spec) = row.spec.as_mut() {
            spec.vpc.push(kiln_proto::v1::VpcAttachment {
                network: "db".into(),
                aliases: vec![],
            });
        }
        let id = create_queued(&core, row).await;
        assert!(!dispatch_round(&core, &mut HashSet::new())
            .await
            .expect("round"));
        assert!(rx.try_recv().is_err(), "nothing was sent to the worker");
        let reason = record(&core.build(&id).await.expect("build"))
            .queued_reason
            .clone();
        assert!(
            reason.contains(
                "no connected worker may run it: project \"p\" may not use network \"db\""
            ),
            "{reason}"
        );
        // Once the worker allows the project, the build goes to it.
        if let Some(w) = core.workers().get_mut("w") {
            w.policy.networks[0].projects.push("p".into());
        }
        assert!(dispatch_round(&core, &mut HashSet::new())
            .await
            .expect("round"));
        assert!(rx.try_recv().is_ok(), "the assignment was sent");
    }

    #[tokio::test]
    async fn a_build_claimed_since_the_queue_was_read_is_not_claimed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_in(dir.path());
        let (tx1, mut rx1) = tokio::sync::mpsc::channel(8);
        core.workers()
            .insert("w1".into(), worker(Default::default(), 1, tx1));
        let id = create_queued(&core, queued("p", now_ms() + 60_000)).await;
        assert!(dispatch_round(&core, &mut HashSet::new())
            .await
            .expect("round"));
        assert!(rx1.try_recv().is_ok(), "w1 has it");
        // What a second coordinator sees when its queue read raced the claim: the id still
        // listed, the row already running.
        core.update(&id, |_| Some(QueueChange::Enqueue))
            .await
            .expect("stale queue entry");
        let (tx2, mut rx2) = tokio::sync::mpsc::channel(8);
        core.workers()
            .insert("w2".into(), worker(Default::default(), 1, tx2));
        dispatch_round(&core, &mut HashSet::new())
            .await
            .expect("round");
        assert!(
            rx2.try_recv().is_err(),
            "the running build was not handed out again"
        );
        assert_eq!(record(&core.build(&id).await.expect("build")).attempt, 1);
    }

    #[tokio::test]
    async fn a_stopped_build_whose_worker_is_lost_ends_stopped_not_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_in(dir.path());
        let id = create_queued(&core, queued("p", now_ms() + 60_000)).await;
        core.update(&id, |row| {
            row.lease = Some(kiln_proto::v1::Lease {
                worker_id: "gone".into(),
                epoch: 0,
                expires_ms: now_ms() - 1,
            });
            let b = row.build.as_mut()?;
            b.build_status = "IN_PROGRESS".into();
            b.stop_requested = true;
            Some(QueueChange::Claim { limit: 0 })
        })
        .await
        .expect("update");
        requeue(&core, &id, 0, "no heartbeat", Lost::Expired).await;
        let b = record(&core.build(&id).await.expect("build")).clone();
        assert_eq!(b.build_status, "STOPPED");
        assert!(b.build_complete && !b.stop_requested);
    }

    #[tokio::test]
    async fn a_project_at_its_limit_does_not_hold_up_other_projects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_in(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        core.workers()
            .insert("w".into(), worker(Default::default(), 2, tx));
        for project in ["alpha", "alpha", "alpha", "beta"] {
            let mut row = queued(project, now_ms() + 60_000);
            row.concurrent_build_limit = u32::from(project == "alpha");
            core.store.create_build(row, None).await.expect("create");
        }
        let mut full = HashSet::new();
        while dispatch_round(&core, &mut full).await.expect("round") {}
        let mut assigned = Vec::new();
        while let Ok(Ok(message)) = rx.try_recv() {
            if let Some(coordinator_message::Kind::Assignment(a)) = message.kind {
                assigned.push(a.project_name);
            }
        }
        assigned.sort();
        assert_eq!(
            assigned,
            ["alpha", "beta"],
            "one alpha (its limit) and the beta behind it"
        );
    }
}
