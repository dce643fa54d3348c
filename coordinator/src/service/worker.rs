//! `WorkerService`: the workers' control stream, source downloads, artifact uploads and build
//! caches. Every
//! message about a build is checked against the build's current lease epoch (the fencing token);
//! a stale one gets a `Reject` and changes nothing. Log chunks are stored per attempt (keyed by
//! build and epoch), so a worker that lost its lease can never write into the log of the attempt
//! that replaced it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use kiln_cache::Digest;
use kiln_proto::v1::worker_service_server::WorkerService;
use kiln_proto::v1::{
    coordinator_message, upload_artifacts_request, worker_message, CacheEntry, Completed,
    CompletedAck, CoordinatorMessage, DataChunk, FetchSourceRequest, HasBlobsRequest,
    HasBlobsResponse, Hello, LeaseRef, LogAck, LogData, LookupCacheRequest, PhaseStarted, Reject,
    Resume, SaveCacheRequest, SaveCacheResponse, StoredBuild, UploadArtifactsRequest,
    UploadArtifactsResponse, Welcome, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::caches;
use crate::core::{
    close_phase, epoch, ms, now_ms, open_phase, record, store_error, Core, WorkerConn, WorkerTx,
};
use crate::scheduler::{requeue, Lost};
use crate::service::BoxStream;
use crate::store::{QueueChange, StateStore};

/// The store key of one attempt's log.
pub fn log_key(build_id: &str, epoch: u64) -> String {
    format!("{build_id}#{epoch}")
}

pub struct WorkerApi<S> {
    pub core: Arc<Core<S>>,
}

#[tonic::async_trait]
impl<S: StateStore> WorkerService for WorkerApi<S> {
    type ConnectWorkerStream = BoxStream<CoordinatorMessage>;
    type FetchSourceStream = BoxStream<DataChunk>;

    async fn connect_worker(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectWorkerStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
            })) => hello,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.worker_id.is_empty() {
            return Err(Status::invalid_argument("Hello without a worker_id"));
        }
        let (tx, rx) = mpsc::channel(256);
        let welcome = welcome(&self.core, &hello).await?;
        let held: HashMap<String, u64> = welcome
            .resumed
            .iter()
            .filter(|r| r.resumed)
            .map(|r| (r.build_id.clone(), r.epoch))
            .collect();
        let _ = tx
            .send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Welcome(welcome)),
            }))
            .await;
        let conn = self.core.next_conn();
        let worker_id = hello.worker_id.clone();
        let previous = self.core.workers().insert(
            worker_id.clone(),
            WorkerConn {
                conn,
                labels: hello.labels.into_iter().collect::<BTreeMap<_, _>>(),
                policy: hello.policy.unwrap_or_default(),
                slots: hello.slots.max(1),
                draining: false,
                tx: tx.clone(),
                running: held,
                cancelled: HashSet::new(),
                log_bytes: HashMap::new(),
            },
        );
        if previous.is_some() {
            tracing::info!(
                worker = worker_id,
                "worker reconnected; its old stream is replaced"
            );
        }
        tracing::info!(worker = worker_id, slots = hello.slots, "worker connected");
        self.core.dispatch.notify_one();
        let core = self.core.clone();
        tokio::spawn(async move {
            let session = Session {
                core: core.clone(),
                worker_id: worker_id.clone(),
                conn,
                tx,
            };
            while let Some(message) = inbound.next().await {
                let Ok(WorkerMessage { kind: Some(kind) }) = message else {
                    break;
                };
                // Completions and lease renewals do not depend on each other's order, so they
                // are written concurrently (and committed together); phases and log chunks of a
                // build stay in order.
                let concurrent = matches!(
                    kind,
                    worker_message::Kind::Completed(_) | worker_message::Kind::Heartbeat(_)
                );
                let session = session.clone();
                let work = async move {
                    if let Err(e) = session.handle(kind).await {
                        tracing::warn!(worker = session.worker_id, error = %e, "worker message failed");
                    }
                };
                match concurrent {
                    true => drop(tokio::spawn(work)),
                    false => work.await,
                }
            }
            let mut workers = core.workers();
            if workers.get(&worker_id).is_some_and(|w| w.conn == conn) {
                workers.remove(&worker_id);
            }
            tracing::info!(worker = worker_id, "worker disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_source(
        &self,
        request: Request<FetchSourceRequest>,
    ) -> Result<Response<Self::FetchSourceStream>, Status> {
        let stream = self
            .core
            .blobs
            .read(&request.into_inner().digest, 0)
            .await?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map(|data| DataChunk { data })),
        )))
    }

    async fn upload_artifacts(
        &self,
        request: Request<Streaming<UploadArtifactsRequest>>,
    ) -> Result<Response<UploadArtifactsResponse>, Status> {
        let mut inbound = request.into_inner();
        let (lease, digest) = match inbound.next().await {
            Some(Ok(UploadArtifactsRequest {
                part: Some(upload_artifacts_request::Part::Begin(lease)),
                digest,
            })) => (lease, digest),
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be `begin`",
                ))
            }
        };
        check_lease(&self.core, &lease).await?;
        let claimed = match digest.as_str() {
            "" => None,
            text => Some(
                Digest::parse(text)
                    .map_err(|e| Status::invalid_argument(format!("`digest` on `begin`: {e}")))?,
            ),
        };
        let chunks = inbound.map(|m| match m?.part {
            Some(upload_artifacts_request::Part::Data(d)) => Ok(d),
            _ => Err(Status::invalid_argument("expected `data` after `begin`")),
        });
        let stored = self
            .core
            .blobs
            .store_artifacts(
                &lease.build_id,
                self.core.config.max_artifacts_bytes,
                claimed,
                Box::pin(chunks),
            )
            .await?;
        Ok(Response::new(UploadArtifactsResponse {
            digest: stored.digest,
            size: stored.size,
        }))
    }

    async fn lookup_cache(
        &self,
        request: Request<LookupCacheRequest>,
    ) -> Result<Response<CacheEntry>, Status> {
        let r = request.into_inner();
        let row = check_lease(&self.core, &lease_of(r.lease)?).await?;
        let project = &record(&row).project_name;
        let counted = r.restore.then_some(&self.core.cache_lookups);
        let entry = caches::lookup(
            &self.core.store,
            counted,
            project,
            &r.paths,
            &r.key,
            &r.prefixes,
        )
        .await?;
        Ok(Response::new(entry))
    }

    async fn has_blobs(
        &self,
        request: Request<HasBlobsRequest>,
    ) -> Result<Response<HasBlobsResponse>, Status> {
        let present = self
            .core
            .blobs
            .has_blobs(&request.into_inner().digests)
            .await?;
        Ok(Response::new(HasBlobsResponse { present }))
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<DataChunk>>,
    ) -> Result<Response<UploadArtifactsResponse>, Status> {
        let chunks = request.into_inner().map(|m| m.map(|c| c.data));
        let stored = self
            .core
            .blobs
            .store_stream(caches::MAX_SEGMENT_BYTES, Box::pin(chunks))
            .await?;
        Ok(Response::new(UploadArtifactsResponse {
            digest: stored.digest,
            size: stored.size,
        }))
    }

    async fn save_cache(
        &self,
        request: Request<SaveCacheRequest>,
    ) -> Result<Response<SaveCacheResponse>, Status> {
        let r = request.into_inner();
        let lease = lease_of(r.lease)?;
        let row = check_lease(&self.core, &lease).await?;
        let entry = r
            .entry
            .ok_or_else(|| Status::invalid_argument("SaveCache needs the entry"))?;
        let project = &record(&row).project_name;
        let stored = caches::save(
            &self.core.store,
            &self.core.blobs,
            project,
            &lease.build_id,
            entry,
        )
        .await?;
        Ok(Response::new(SaveCacheResponse { stored }))
    }
}

fn lease_of(lease: Option<LeaseRef>) -> Result<LeaseRef, Status> {
    lease.ok_or_else(|| Status::invalid_argument("the request needs the build's lease"))
}

/// The Welcome for a (re)connecting worker: which of its builds it may go on with.
async fn welcome<S: StateStore>(core: &Core<S>, hello: &Hello) -> Result<Welcome, Status> {
    let mut resumed = Vec::new();
    for lease in &hello.running {
        let ok = renew(core, &hello.worker_id, lease).await?;
        let next_log_seq = match ok {
            true => core
                .store
                .log_len(&log_key(&lease.build_id, lease.epoch))
                .await
                .map_err(store_error)?,
            false => 0,
        };
        resumed.push(Resume {
            build_id: lease.build_id.clone(),
            epoch: lease.epoch,
            resumed: ok,
            next_log_seq,
        });
    }
    Ok(Welcome {
        lease_ttl_ms: ms(core.config.lease_ttl) as u64,
        heartbeat_interval_ms: ms(core.config.heartbeat_interval()) as u64,
        resumed,
    })
}

/// Renews a lease the worker holds; false when the epoch is no longer the build's.
async fn renew<S: StateStore>(
    core: &Core<S>,
    worker: &str,
    lease: &LeaseRef,
) -> Result<bool, Status> {
    let ttl = ms(core.config.lease_ttl);
    let result = core
        .update(&lease.build_id, |row| {
            if epoch(row) != lease.epoch || record(row).build_complete {
                return None;
            }
            let l = row.lease.as_mut().filter(|l| l.worker_id == worker)?;
            l.expires_ms = now_ms() + ttl;
            Some(QueueChange::Keep)
        })
        .await;
    match result {
        Ok(updated) => Ok(updated.is_some()),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The build, or FAILED_PRECONDITION unless the lease is its current one.
async fn check_lease<S: StateStore>(
    core: &Core<S>,
    lease: &LeaseRef,
) -> Result<StoredBuild, Status> {
    let row = core.build(&lease.build_id).await?;
    if epoch(&row) != lease.epoch || row.lease.is_none() || record(&row).build_complete {
        return Err(Status::failed_precondition(format!(
            "lease epoch {} of build {} is not current (the build was re-assigned or ended)",
            lease.epoch, lease.build_id
        )));
    }
    Ok(row)
}

/// One worker's stream.
struct Session<S> {
    core: Arc<Core<S>>,
    worker_id: String,
    /// This stream's connection number: a later stream of the same worker replaces it, and what
    /// this one still says then changes nothing of the newer one's.
    conn: u64,
    tx: WorkerTx,
}

impl<S> Clone for Session<S> {
    fn clone(&self) -> Self {
        Session {
            core: self.core.clone(),
            worker_id: self.worker_id.clone(),
            conn: self.conn,
            tx: self.tx.clone(),
        }
    }
}

impl<S: StateStore> Session<S> {
    async fn handle(&self, kind: worker_message::Kind) -> Result<(), Status> {
        match kind {
            worker_message::Kind::Hello(_) => {
                Err(Status::invalid_argument("Hello may only come first"))
            }
            worker_message::Kind::Heartbeat(beat) => {
                for lease in &beat.running {
                    if !renew(&self.core, &self.worker_id, lease).await? {
                        self.reject(lease, "the lease is no longer yours").await;
                    }
                }
                Ok(())
            }
            worker_message::Kind::PhaseStarted(phase) => self.phase(phase).await,
            worker_message::Kind::Log(chunk) => self.log(chunk).await,
            worker_message::Kind::Completed(done) => self.completed(done).await,
            worker_message::Kind::Declined(declined) => {
                // Only the attempt this worker holds goes back; an older one's news is stale.
                let held = self
                    .with_conn(|w| w.running.get(&declined.build_id).copied())
                    .flatten();
                if held == Some(declined.epoch) {
                    self.forget(&declined.build_id, declined.epoch);
                    let why = format!("it declined the build: {}", declined.reason);
                    let (id, epoch) = (&declined.build_id, declined.epoch);
                    requeue(&self.core, id, epoch, &why, Lost::Undelivered).await;
                }
                Ok(())
            }
            worker_message::Kind::Draining(_) => {
                self.with_conn(|w| w.draining = true);
                tracing::info!(worker = self.worker_id, "worker is draining");
                Ok(())
            }
        }
    }

    async fn send(&self, kind: coordinator_message::Kind) {
        let _ = self
            .tx
            .send(Ok(CoordinatorMessage { kind: Some(kind) }))
            .await;
    }

    async fn reject(&self, lease: &LeaseRef, reason: &str) {
        self.forget(&lease.build_id, lease.epoch);
        self.send(coordinator_message::Kind::Reject(Reject {
            build_id: lease.build_id.clone(),
            epoch: lease.epoch,
            reason: reason.to_string(),
        }))
        .await;
    }

    /// Runs `f` on this stream's worker entry, unless a newer stream replaced it.
    fn with_conn<R>(&self, f: impl FnOnce(&mut WorkerConn) -> R) -> Option<R> {
        let mut workers = self.core.workers();
        workers
            .get_mut(&self.worker_id)
            .filter(|w| w.conn == self.conn)
            .map(f)
    }

    /// The worker no longer holds this attempt.
    fn forget(&self, build_id: &str, epoch: u64) {
        self.with_conn(|w| w.release(build_id, epoch));
        self.core.dispatch.notify_one();
    }

    /// The chunk's bytes to store: past `max_log_bytes` chunks keep their number but lose
    /// their bytes, and the first one says so.
    fn capped(&self, chunk: &LogData) -> Vec<u8> {
        let cap = self.core.config.max_log_bytes;
        let size = chunk.data.len() as u64;
        let before = self
            .with_conn(|w| {
                let total = w
                    .log_bytes
                    .entry((chunk.build_id.clone(), chunk.epoch))
                    .or_default();
                let before = *total;
                *total += size;
                before
            })
            .unwrap_or(0);
        match (before + size <= cap, before <= cap) {
            (true, _) => chunk.data.clone(),
            (false, true) => format!(
                "\n[Kiln] the log is over {cap} bytes (max_log_bytes): the rest is not kept\n"
            )
            .into_bytes(),
            (false, false) => Vec::new(),
        }
    }

    /// Whether the stored build's current lease is this worker's, with this epoch.
    fn holds(&self, row: &kiln_proto::v1::StoredBuild, held_epoch: u64) -> bool {
        epoch(row) == held_epoch
            && !record(row).build_complete
            && row
                .lease
                .as_ref()
                .is_some_and(|l| l.worker_id == self.worker_id && l.epoch == held_epoch)
    }

    async fn phase(&self, phase: PhaseStarted) -> Result<(), Status> {
        let lease = LeaseRef {
            build_id: phase.build_id.clone(),
            epoch: phase.epoch,
        };
        let updated = self
            .core
            .update(&phase.build_id, |row| {
                if !self.holds(row, phase.epoch) {
                    return None;
                }
                let now = now_ms();
                if record(row).current_phase != phase.phase_type {
                    close_phase(row, "SUCCEEDED", None, now);
                    open_phase(row, &phase.phase_type, now);
                }
                Some(QueueChange::Keep)
            })
            .await?;
        if updated.is_none() {
            self.reject(&lease, "stale epoch").await;
        }
        Ok(())
    }

    async fn log(&self, chunk: LogData) -> Result<(), Status> {
        let key = log_key(&chunk.build_id, chunk.epoch);
        let held = self
            .with_conn(|w| w.running.get(&chunk.build_id).copied())
            .flatten();
        let holds = match held == Some(chunk.epoch) {
            true => {
                let row = self.core.store.get_build(&chunk.build_id).await;
                row.map_err(store_error)?
                    .is_some_and(|row| self.holds(&row, chunk.epoch))
            }
            false => false,
        };
        if !holds {
            let lease = LeaseRef {
                build_id: chunk.build_id.clone(),
                epoch: chunk.epoch,
            };
            self.reject(&lease, "log for a build this worker does not hold")
                .await;
            return Ok(());
        }
        let data = self.capped(&chunk);
        let next_seq = self
            .core
            .store
            .append_log(&key, chunk.seq, &data)
            .await
            .or_else(|e| match e {
                crate::store::StoreError::LogGap { expected, .. } => Ok(expected),
                e => Err(store_error(e)),
            })?;
        self.core.changed();
        self.send(coordinator_message::Kind::LogAck(LogAck {
            build_id: chunk.build_id,
            epoch: chunk.epoch,
            next_seq,
        }))
        .await;
        Ok(())
    }

    async fn completed(&self, done: Completed) -> Result<(), Status> {
        let lease = LeaseRef {
            build_id: done.build_id.clone(),
            epoch: done.epoch,
        };
        let mut duplicate = false;
        let updated = self
            .core
            .update(&done.build_id, |row| {
                if epoch(row) != done.epoch {
                    return None;
                }
                if record(row).build_complete {
                    // A resend whose ack was lost.
                    duplicate = row.lease.is_none();
                    return None;
                }
                if !self.holds(row, done.epoch) {
                    return None;
                }
                let now = now_ms();
                row.lease = None;
                let build = row.build.as_mut()?;
                // The coordinator's phases up to the last QUEUED (earlier attempts included),
                // then the worker's own.
                let keep = build
                    .phases
                    .iter()
                    .rposition(|p| p.phase_type == "QUEUED")
                    .map_or(0, |i| i + 1);
                build.phases.truncate(keep);
                build.phases.extend(
                    done.phases
                        .iter()
                        .filter(|p| p.phase_type != "SUBMITTED" && p.phase_type != "QUEUED")
                        .cloned(),
                );
                build.build_status = done.build_status.clone();
                build.current_phase = "COMPLETED".to_string();
                build.build_complete = true;
                build.end_time_ms = now;
                build.stop_requested = false;
                build.exported_environment_variables = done.exported_environment_variables.clone();
                build.resolved_source_version = done.resolved_source_version.clone();
                build.artifacts_digest = done.artifacts_digest.clone();
                build.artifacts_size = done.artifacts_size;
                build.artifacts = done.artifacts.clone();
                build.secondary_artifacts = done.secondary_artifacts.clone();
                build.network_interfaces = done.network_interfaces.clone();
                Some(QueueChange::Finish)
            })
            .await?;
        if updated.is_some() || duplicate {
            self.forget(&done.build_id, done.epoch);
            self.send(coordinator_message::Kind::CompletedAck(CompletedAck {
                build_id: done.build_id,
                epoch: done.epoch,
            }))
            .await;
        } else {
            self.reject(&lease, "stale epoch: the build was re-assigned or ended")
                .await;
        }
        Ok(())
    }
}
