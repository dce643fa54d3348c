//! The coordinator's shared state: the store, the blobs, the workers connected to this
//! coordinator, and the change signal that wakes log followers, watchers and the dispatcher.
//!
//! Everything durable lives in the [`StateStore`]; what is here is rebuilt when a coordinator
//! starts (workers reconnect and say what they run). Several coordinators may share one store:
//! each dispatches to its own workers, and every change to a build is a compare-and-set, so two
//! coordinators never both act on the same version of a build.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_proto::policy::{admit, Refusal};
use kiln_proto::v1::{
    Assignment, BuildPhase, CoordinatorMessage, PhaseContext, SandboxPolicy, StoredBuild,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tonic::Status;

use crate::blobs::Blobs;
use crate::config::CoordinatorConfig;
use crate::store::{QueueChange, StateStore, StoreError, Updated};

/// Messages to one worker's stream.
pub type WorkerTx = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// A worker connected to this coordinator.
pub struct WorkerConn {
    /// Tells this connection from a later one of the same worker.
    pub conn: u64,
    pub labels: BTreeMap<String, String>,
    /// The networks and sandbox exceptions it offers (its config).
    pub policy: SandboxPolicy,
    pub slots: u32,
    pub draining: bool,
    pub tx: WorkerTx,
    /// Builds it holds leases for (or is being assigned), with their epochs.
    pub running: HashMap<String, u64>,
    /// Attempts (build, epoch) a Cancel was sent for (sent once).
    pub cancelled: HashSet<(String, u64)>,
    /// Log bytes received per attempt held, against `max_log_bytes` (counted from this
    /// connection on).
    pub log_bytes: HashMap<(String, u64), u64>,
}

impl WorkerConn {
    pub fn free(&self) -> u32 {
        match self.draining {
            true => 0,
            false => self.slots.saturating_sub(self.running.len() as u32),
        }
    }

    /// The worker no longer holds this attempt of a build (an older attempt's news changes
    /// nothing).
    pub fn release(&mut self, build_id: &str, epoch: u64) {
        if self.running.get(build_id) == Some(&epoch) {
            self.running.remove(build_id);
        }
        let attempt = (build_id.to_string(), epoch);
        self.cancelled.remove(&attempt);
        self.log_bytes.remove(&attempt);
    }

    /// Whether this worker carries every label a build needs.
    pub fn matches(&self, wanted: &std::collections::HashMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Whether this worker's policy admits the networks and sandbox exceptions the build asks
    /// for (its labels are [`WorkerConn::matches`]'s business).
    pub fn accepts(&self, row: &StoredBuild) -> Result<(), Refusal> {
        admit(
            &self.policy,
            row.spec.as_ref().unwrap_or(&Assignment::default()),
        )
    }
}

/// What the connected workers that carry a build's labels say to it: `Ok` when one of them
/// admits it or none is connected (it waits for one), else the most telling refusal (a worker
/// that has the network but not for this project says more than one without it).
pub fn admission<'a>(
    workers: impl Iterator<Item = &'a WorkerConn>,
    row: &StoredBuild,
) -> Result<(), Refusal> {
    let mut refusal: Option<Refusal> = None;
    for w in workers.filter(|w| w.matches(&row.worker_labels)) {
        match w.accepts(row) {
            Ok(()) => return Ok(()),
            Err(r @ Refusal::Denied(_)) => refusal = Some(r),
            Err(r) => {
                refusal.get_or_insert(r);
            }
        }
    }
    refusal.map_or(Ok(()), Err)
}

pub struct Core<S> {
    pub store: S,
    pub blobs: Blobs,
    pub config: CoordinatorConfig,
    /// Cache restores served (the hit ratio of `GetStoreMetrics`).
    pub cache_lookups: crate::caches::Lookups,
    workers: Mutex<HashMap<String, WorkerConn>>,
    changes: watch::Sender<u64>,
    pub dispatch: Notify,
    pub started: Instant,
    next_conn: std::sync::atomic::AtomicU64,
}

/// How many times a compare-and-set is retried against concurrent writers.
const CAS_RETRIES: usize = 64;

impl<S: StateStore> Core<S> {
    pub fn new(store: S, blobs: Blobs, config: CoordinatorConfig) -> Arc<Core<S>> {
        Arc::new(Core {
            store,
            blobs,
            config,
            cache_lookups: crate::caches::Lookups::default(),
            workers: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            dispatch: Notify::new(),
            started: Instant::now(),
            next_conn: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn workers(&self) -> MutexGuard<'_, HashMap<String, WorkerConn>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_conn(&self) -> u64 {
        self.next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Something about some build changed: wake followers and watchers.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver for [`Core::changed`] signals.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads a build; NOT_FOUND names the id.
    pub async fn build(&self, id: &str) -> Result<StoredBuild, Status> {
        self.store
            .get_build(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                Status::not_found(format!("no build {id:?}: list builds with `kiln list`"))
            })
    }

    /// Changes a build with compare-and-set, re-reading and retrying when another writer won.
    /// `change` returns `None` to leave the build alone (then `Ok(None)` is returned).
    pub async fn update<F>(&self, id: &str, mut change: F) -> Result<Option<StoredBuild>, Status>
    where
        F: FnMut(&mut StoredBuild) -> Option<QueueChange> + Send,
    {
        for _ in 0..CAS_RETRIES {
            let mut row = self.build(id).await?;
            let Some(queue) = change(&mut row) else {
                return Ok(None);
            };
            match self
                .store
                .update_build(row, queue)
                .await
                .map_err(store_error)?
            {
                Updated::Done(row) => {
                    self.changed();
                    return Ok(Some(row));
                }
                Updated::Conflict => continue,
                Updated::LimitReached => return Ok(None),
                Updated::Missing => return Err(Status::not_found(format!("no build {id:?}"))),
            }
        }
        Err(Status::aborted(format!(
            "build {id} changed too often to update; try again"
        )))
    }
}

pub fn store_error(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Closes the open phase (if any) with a status and optional context.
pub fn close_phase(row: &mut StoredBuild, status: &str, context: Option<PhaseContext>, now: i64) {
    let Some(build) = row.build.as_mut() else {
        return;
    };
    if let Some(phase) = build.phases.last_mut() {
        if phase.end_time_ms == 0 {
            phase.end_time_ms = now;
            phase.duration_in_seconds = (now - phase.start_time_ms) / 1000;
            phase.phase_status = status.to_string();
            phase.contexts.extend(context);
        }
    }
}

/// Opens a phase and makes it the current one.
pub fn open_phase(row: &mut StoredBuild, name: &str, now: i64) {
    if let Some(build) = row.build.as_mut() {
        build.current_phase = name.to_string();
        build.phases.push(BuildPhase {
            phase_type: name.to_string(),
            start_time_ms: now,
            ..BuildPhase::default()
        });
    }
}

/// Ends a build that never reached (or lost) its worker: closes the open phase with `status`,
/// records why, and marks it complete.
pub fn end_build(row: &mut StoredBuild, status: &str, code: &str, message: &str, now: i64) {
    let context = PhaseContext {
        status_code: code.to_string(),
        message: message.to_string(),
    };
    close_phase(row, status, Some(context), now);
    open_phase(row, "COMPLETED", now);
    row.lease = None;
    if let Some(build) = row.build.as_mut() {
        build.build_status = status.to_string();
        build.build_complete = true;
        build.end_time_ms = now;
        build.stop_requested = false;
        build.queued_reason.clear();
    }
}

/// The build's record, which every stored build has.
pub fn record(row: &StoredBuild) -> &kiln_proto::v1::Build {
    static EMPTY: std::sync::OnceLock<kiln_proto::v1::Build> = std::sync::OnceLock::new();
    row.build
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

pub fn epoch(row: &StoredBuild) -> u64 {
    row.spec.as_ref().map_or(0, |s| s.epoch)
}
