//! `BuildService`: the client API. Reads go straight to the store; followers (WatchBuild,
//! StreamLogs) wake on this coordinator's change signal and poll the store every
//! [`POLL`] for changes made through other coordinators.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kiln_proto::v1::build_service_server::BuildService;
use kiln_proto::v1::{
    upload_source_request, ArtifactUrl, AttachedBuild, BatchGetBuildsRequest,
    BatchGetBuildsResponse, Build, DataChunk, DeleteCachesRequest, DeleteCachesResponse,
    DeleteProjectRequest, DeleteProjectResponse, DownloadArtifactRequest, GetArtifactUrlRequest,
    GetBuildRequest, GetProjectRequest, GetStoreMetricsRequest, HasBlobsRequest, HasBlobsResponse,
    ListBuildsRequest, ListBuildsResponse, ListCachesRequest, ListCachesResponse,
    ListNetworksRequest, ListNetworksResponse, ListProjectsRequest, ListProjectsResponse, LogChunk,
    Project, RetryBuildRequest, StartBuildRequest, StartBuildResponse, StopBuildRequest,
    StoreMetrics, StreamLogsRequest, UploadSourceRequest, UploadSourceResponse, WatchBuildRequest,
    WorkerNetworks,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::archive;
use crate::caches;
use crate::core::{end_build, epoch, now_ms, record, store_error, Core};
use crate::scheduler::send_cancel;
use crate::service::start::{check_project, project_of, retry_request, start};
use crate::service::worker::log_key;
use crate::service::BoxStream;
use crate::store::{BuildFilter, QueueChange, StateStore};

/// How often followers look at the store when nothing woke them.
const POLL: Duration = Duration::from_millis(250);
/// Log chunks read from the store at once.
const LOG_BATCH: usize = 256;

pub struct BuildApi<S> {
    pub core: Arc<Core<S>>,
}

#[tonic::async_trait]
impl<S: StateStore> BuildService for BuildApi<S> {
    type WatchBuildStream = BoxStream<Build>;
    type StreamLogsStream = BoxStream<LogChunk>;
    type DownloadArtifactStream = BoxStream<DataChunk>;

    async fn start_build(
        &self,
        request: Request<StartBuildRequest>,
    ) -> Result<Response<StartBuildResponse>, Status> {
        let build = start(&self.core, request.into_inner(), None).await?;
        Ok(Response::new(StartBuildResponse { build: Some(build) }))
    }

    async fn get_build(
        &self,
        request: Request<GetBuildRequest>,
    ) -> Result<Response<Build>, Status> {
        let row = self.core.build(&request.into_inner().id).await?;
        Ok(Response::new(row.build.unwrap_or_default()))
    }

    async fn batch_get_builds(
        &self,
        request: Request<BatchGetBuildsRequest>,
    ) -> Result<Response<BatchGetBuildsResponse>, Status> {
        let ids = request.into_inner().ids;
        if ids.len() > 100 {
            return Err(Status::invalid_argument(
                "at most 100 ids per BatchGetBuilds",
            ));
        }
        let rows = self
            .core
            .store
            .get_builds(&ids)
            .await
            .map_err(store_error)?;
        let mut response = BatchGetBuildsResponse::default();
        for (id, row) in ids.into_iter().zip(rows) {
            match row.and_then(|r| r.build) {
                Some(b) => response.builds.push(b),
                None => response.builds_not_found.push(id),
            }
        }
        Ok(Response::new(response))
    }

    async fn list_builds(
        &self,
        request: Request<ListBuildsRequest>,
    ) -> Result<Response<ListBuildsResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.page_size {
            0 => 100,
            n if n <= 1000 => n as usize,
            _ => return Err(Status::invalid_argument("page_size is at most 1000")),
        };
        let filter = BuildFilter {
            project: (!r.project_name.is_empty()).then_some(r.project_name),
            status: (!r.status.is_empty()).then_some(r.status),
            from_ms: (r.start_time_from_ms > 0).then_some(r.start_time_from_ms),
            to_ms: (r.start_time_to_ms > 0).then_some(r.start_time_to_ms),
        };
        let after = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        if let Some(token) = after {
            if self
                .core
                .store
                .get_build(token)
                .await
                .map_err(store_error)?
                .is_none()
            {
                return Err(Status::invalid_argument(format!(
                    "page_token {token:?} is not one this server gave out: pass next_page_token \
                     from the previous response"
                )));
            }
        }
        let rows = self
            .core
            .store
            .list_builds(&filter, after, limit + 1)
            .await
            .map_err(store_error)?;
        let mut builds: Vec<Build> = rows.into_iter().filter_map(|r| r.build).collect();
        let next_page_token = match builds.len() > limit {
            true => {
                builds.truncate(limit);
                builds.last().map(|b| b.id.clone()).unwrap_or_default()
            }
            false => String::new(),
        };
        Ok(Response::new(ListBuildsResponse {
            builds,
            next_page_token,
        }))
    }

    async fn stop_build(
        &self,
        request: Request<StopBuildRequest>,
    ) -> Result<Response<Build>, Status> {
        let id = request.into_inner().id;
        let row = self.core.build(&id).await?;
        if record(&row).build_complete {
            return Err(Status::failed_precondition(format!(
                "build {id} already ended {}",
                record(&row).build_status
            )));
        }
        let updated = self
            .core
            .update(&id, |row| {
                if record(row).build_complete {
                    return None;
                }
                if row.lease.is_none() {
                    end_build(
                        row,
                        "STOPPED",
                        "BUILD_STOPPED",
                        "stopped while queued",
                        now_ms(),
                    );
                    return Some(QueueChange::Finish);
                }
                row.build.as_mut()?.stop_requested = true;
                Some(QueueChange::Keep)
            })
            .await?;
        let row = match updated {
            Some(row) => row,
            None => self.core.build(&id).await?,
        };
        // A worker on this coordinator hears it now; others within a sweep.
        if let Some(lease) = &row.lease {
            send_cancel(&self.core, &lease.worker_id, &id, lease.epoch, "StopBuild");
        }
        Ok(Response::new(row.build.unwrap_or_default()))
    }

    async fn retry_build(
        &self,
        request: Request<RetryBuildRequest>,
    ) -> Result<Response<StartBuildResponse>, Status> {
        let r = request.into_inner();
        let row = self.core.build(&r.id).await?;
        let stored = self
            .core
            .store
            .get_project(&record(&row).project_name)
            .await
            .map_err(store_error)?;
        let project = stored.unwrap_or_else(|| project_of(&row));
        let retry = retry_request(&row, project, r.idempotency_token);
        let build = start(&self.core, retry, Some(r.id)).await?;
        Ok(Response::new(StartBuildResponse { build: Some(build) }))
    }

    async fn watch_build(
        &self,
        request: Request<WatchBuildRequest>,
    ) -> Result<Response<Self::WatchBuildStream>, Status> {
        let id = request.into_inner().id;
        let first = self.core.build(&id).await?;
        let (tx, rx) = mpsc::channel(16);
        let core = self.core.clone();
        tokio::spawn(async move {
            let mut changes = core.subscribe();
            let mut last = None;
            let mut row = first;
            loop {
                let build = row.build.clone().unwrap_or_default();
                let key = (
                    build.build_status.clone(),
                    build.current_phase.clone(),
                    build.phases.len(),
                );
                if last.as_ref() != Some(&key) {
                    last = Some(key);
                    if tx.send(Ok(build.clone())).await.is_err() {
                        return;
                    }
                }
                if build.build_complete {
                    return;
                }
                // A client that went away ends the watch at once, not at the next send.
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::timeout(POLL, changes.changed()) => {}
                }
                row = match core.build(&id).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stream_logs(
        &self,
        request: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let r = request.into_inner();
        let first = self.core.build(&r.id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(follow_log(self.core.clone(), r, first, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_source(
        &self,
        request: Request<Streaming<UploadSourceRequest>>,
    ) -> Result<Response<UploadSourceResponse>, Status> {
        let limit = self.core.config.max_upload_bytes;
        let mut inbound = request.into_inner();
        match inbound.next().await {
            Some(Ok(UploadSourceRequest {
                part: Some(upload_source_request::Part::Begin(begin)),
            })) => {
                if begin.size > limit {
                    return Err(Status::resource_exhausted(format!(
                        "the source archive has {} bytes, over the limit of {limit} \
                         (max_upload_bytes): leave build outputs and dependencies out of it",
                        begin.size
                    )));
                }
            }
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be `begin`",
                ))
            }
        }
        let mut upload = self
            .core
            .blobs
            .upload(limit)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        while let Some(message) = inbound.next().await {
            match message?.part {
                Some(upload_source_request::Part::Data(data)) => upload.write(&data).await?,
                _ => return Err(Status::invalid_argument("expected `data` after `begin`")),
            }
        }
        let stored = upload.finish(&self.core.blobs, archive::check).await?;
        Ok(Response::new(UploadSourceResponse {
            digest: stored.digest,
            size: stored.size,
        }))
    }

    async fn download_artifact(
        &self,
        request: Request<DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let DownloadArtifactRequest { id, offset } = request.into_inner();
        let row = self.core.build(&id).await?;
        let digest = &record(&row).artifacts_digest;
        if digest.is_empty() {
            let b = record(&row);
            return Err(Status::not_found(format!(
                "build {id} has no artifacts ({})",
                match (b.build_complete, b.artifacts_removed_ms) {
                    (true, 0) => "its buildspec uploads none, or it failed before UPLOAD_ARTIFACTS",
                    (true, _) => "retention removed them ([artifacts] in the coordinator's config)",
                    (false, _) => "it has not finished",
                }
            )));
        }
        let stream = self.core.blobs.read(digest, offset).await?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map(|data| DataChunk { data })),
        )))
    }

    async fn get_artifact_url(
        &self,
        request: Request<GetArtifactUrlRequest>,
    ) -> Result<Response<ArtifactUrl>, Status> {
        let GetArtifactUrlRequest { id, expires_in_s } = request.into_inner();
        let seconds = match expires_in_s {
            0 => 3600,
            s if s <= 7 * 24 * 3600 => s,
            s => {
                return Err(Status::invalid_argument(format!(
                    "expires_in_s {s}: at most 7 days (604800 s), S3's limit"
                )))
            }
        };
        let row = self.core.build(&id).await?;
        if record(&row).artifacts_digest.is_empty() {
            return Err(Status::not_found(format!("build {id} has no artifacts")));
        }
        let expires = Duration::from_secs(u64::from(seconds));
        let url = self.core.blobs.artifacts_url(&id, expires).await?;
        Ok(Response::new(ArtifactUrl {
            url,
            expires_ms: now_ms() + i64::from(seconds) * 1000,
        }))
    }

    async fn create_project(&self, request: Request<Project>) -> Result<Response<Project>, Status> {
        let project = stamped(request.into_inner(), None)?;
        if !self
            .core
            .store
            .put_project(project.clone(), true)
            .await
            .map_err(store_error)?
        {
            return Err(Status::already_exists(format!(
                "project {} exists: update it instead",
                project.name
            )));
        }
        Ok(Response::new(project))
    }

    async fn update_project(&self, request: Request<Project>) -> Result<Response<Project>, Status> {
        let project = request.into_inner();
        let existing = self
            .core
            .store
            .get_project(&project.name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("no project {:?}", project.name)))?;
        let project = stamped(project, Some(existing.created_ms))?;
        self.core
            .store
            .put_project(project.clone(), false)
            .await
            .map_err(store_error)?;
        Ok(Response::new(project))
    }

    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<Project>, Status> {
        let name = request.into_inner().name;
        let project = self
            .core
            .store
            .get_project(&name)
            .await
            .map_err(store_error)?;
        project
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no project {name:?}")))
    }

    async fn list_projects(
        &self,
        _request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        let projects = self.core.store.list_projects().await.map_err(store_error)?;
        Ok(Response::new(ListProjectsResponse { projects }))
    }

    async fn has_blobs(
        &self,
        request: Request<HasBlobsRequest>,
    ) -> Result<Response<HasBlobsResponse>, Status> {
        let digests = request.into_inner().digests;
        let present = self.core.blobs.has_blobs(&digests).await?;
        Ok(Response::new(HasBlobsResponse { present }))
    }

    async fn list_networks(
        &self,
        _request: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        let connected: Vec<(Vec<String>, WorkerNetworks)> = self
            .core
            .workers()
            .iter()
            .map(|(id, w)| {
                let running = w.running.keys().cloned().collect();
                let networks = WorkerNetworks {
                    worker_id: id.clone(),
                    networks: w.policy.networks.clone(),
                    attached: Vec::new(),
                };
                (running, networks)
            })
            .collect();
        let mut workers = Vec::new();
        for (running, mut w) in connected {
            let rows = self
                .core
                .store
                .get_builds(&running)
                .await
                .map_err(store_error)?;
            for row in rows.into_iter().flatten() {
                let build_id = record(&row).id.clone();
                let vpc = row.spec.map(|s| s.vpc).unwrap_or_default();
                w.attached.extend(vpc.into_iter().map(|v| AttachedBuild {
                    build_id: build_id.clone(),
                    network: v.network,
                    aliases: v.aliases,
                }));
            }
            w.attached
                .sort_by(|a, b| (&a.network, &a.build_id).cmp(&(&b.network, &b.build_id)));
            workers.push(w);
        }
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(Response::new(ListNetworksResponse { workers }))
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        let name = request.into_inner().name;
        if !self
            .core
            .store
            .delete_project(&name)
            .await
            .map_err(store_error)?
        {
            return Err(Status::not_found(format!("no project {name:?}")));
        }
        Ok(Response::new(DeleteProjectResponse {}))
    }

    async fn list_caches(
        &self,
        request: Request<ListCachesRequest>,
    ) -> Result<Response<ListCachesResponse>, Status> {
        let project = request.into_inner().project;
        let entries = caches::list(&self.core.store, &project).await?;
        Ok(Response::new(ListCachesResponse { entries }))
    }

    async fn delete_caches(
        &self,
        request: Request<DeleteCachesRequest>,
    ) -> Result<Response<DeleteCachesResponse>, Status> {
        let r = request.into_inner();
        let deleted = caches::delete(&self.core.store, &r.project, &r.key, r.all).await?;
        Ok(Response::new(DeleteCachesResponse { deleted }))
    }

    async fn get_store_metrics(
        &self,
        _request: Request<GetStoreMetricsRequest>,
    ) -> Result<Response<StoreMetrics>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let [bytes_in, bytes_out, blob_hits, blob_misses] = self.core.blobs.traffic();
        let lookups = &self.core.cache_lookups;
        Ok(Response::new(StoreMetrics {
            bytes_in,
            bytes_out,
            blob_hits,
            blob_misses,
            cache_hits: lookups.hits.load(Relaxed),
            cache_misses: lookups.misses.load(Relaxed),
        }))
    }
}

/// Checks a project and sets its times.
fn stamped(mut project: Project, created: Option<i64>) -> Result<Project, Status> {
    check_project(&project)?;
    let now = now_ms();
    project.created_ms = created.unwrap_or(now);
    project.modified_ms = now;
    Ok(project)
}

/// Sends a build's log: the current attempt's chunks from `from_seq`, following new ones (and a
/// new attempt after a re-queue) until the build is complete.
async fn follow_log<S: StateStore>(
    core: Arc<Core<S>>,
    request: StreamLogsRequest,
    first: kiln_proto::v1::StoredBuild,
    tx: mpsc::Sender<Result<LogChunk, Status>>,
) {
    let mut changes = core.subscribe();
    let mut row = first;
    let mut attempt_epoch = epoch(&row);
    let mut seq = request.from_seq;
    loop {
        // Completion is only recorded after every chunk was stored, so a complete build's log
        // read after this point is whole.
        let complete = record(&row).build_complete;
        if epoch(&row) != attempt_epoch {
            attempt_epoch = epoch(&row);
            seq = 0;
        }
        let key = log_key(&record(&row).id, attempt_epoch);
        let chunks = match core.store.read_log(&key, seq, LOG_BATCH).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(store_error(e))).await;
                return;
            }
        };
        let got = chunks.len();
        for c in chunks {
            seq = c.seq + 1;
            let chunk = LogChunk {
                seq: c.seq,
                offset: c.offset,
                data: c.data,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if got == LOG_BATCH {
            continue;
        }
        if complete || !request.follow {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::timeout(POLL, changes.changed()) => {}
        }
        row = match core.build(&request.id).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
    }
}
