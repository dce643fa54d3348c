//! The agent end to end against a fake coordinator (a small WorkerService on loopback that
//! hands out assignments, acknowledges everything and records what it got), with real Docker.
//! The real coordinator's end-to-end tests live in the top-level `tests/` crate.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use kiln_proto::v1::{
    coordinator_message::Kind as Out, upload_artifacts_request::Part, worker_message::Kind as In,
    Assignment, CacheEntry, CompletedAck, CoordinatorMessage, DataChunk, FetchSourceRequest,
    HasBlobsRequest, HasBlobsResponse, LogAck, LookupCacheRequest, SaveCacheRequest,
    SaveCacheResponse, UploadArtifactsRequest, UploadArtifactsResponse, Welcome, WorkerMessage,
};
use kiln_worker::agent::{run_agent, AgentConfig};
use kiln_worker::secrets::SecretStore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct Seen {
    messages: Vec<WorkerMessage>,
    authorization: Vec<String>,
    artifacts: Vec<(String, Vec<u8>)>,
}

#[derive(Clone)]
struct FakeCoordinator {
    assignments: Arc<Mutex<Vec<Assignment>>>,
    sources: Arc<BTreeMap<String, Vec<u8>>>,
    seen: Arc<Mutex<Seen>>,
    completed: mpsc::UnboundedSender<kiln_proto::v1::Completed>,
}

fn to_worker(kind: Out) -> Result<CoordinatorMessage, Status> {
    Ok(CoordinatorMessage { kind: Some(kind) })
}

#[tonic::async_trait]
impl WorkerService for FakeCoordinator {
    type ConnectWorkerStream = ReceiverStream<Result<CoordinatorMessage, Status>>;
    type FetchSourceStream = ReceiverStream<Result<DataChunk, Status>>;

    async fn connect_worker(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectWorkerStream>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.seen.lock().expect("seen").authorization.push(auth);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                this.seen.lock().expect("seen").messages.push(m.clone());
                let reply = match m.kind {
                    Some(In::Hello(_)) => {
                        let welcome = Out::Welcome(Welcome {
                            lease_ttl_ms: 3000,
                            heartbeat_interval_ms: 1000,
                            resumed: Vec::new(),
                        });
                        let _ = tx.send(to_worker(welcome)).await;
                        let assignments = std::mem::take(&mut *this.assignments.lock().expect("a"));
                        for a in assignments {
                            let _ = tx.send(to_worker(Out::Assignment(a))).await;
                        }
                        continue;
                    }
                    Some(In::Log(log)) => Out::LogAck(LogAck {
                        build_id: log.build_id,
                        epoch: log.epoch,
                        next_seq: log.seq + 1,
                    }),
                    Some(In::Completed(c)) => {
                        let _ = this.completed.send(c.clone());
                        Out::CompletedAck(CompletedAck {
                            build_id: c.build_id,
                            epoch: c.epoch,
                        })
                    }
                    _ => continue,
                };
                let _ = tx.send(to_worker(reply)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_source(
        &self,
        request: Request<FetchSourceRequest>,
    ) -> Result<Response<Self::FetchSourceStream>, Status> {
        let data = self
            .sources
            .get(&request.into_inner().digest)
            .cloned()
            .ok_or_else(|| Status::not_found("no such source"))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in data.chunks(1000) {
                let _ = tx
                    .send(Ok(DataChunk {
                        data: chunk.to_vec().into(),
                    }))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload_artifacts(
        &self,
        request: Request<Streaming<UploadArtifactsRequest>>,
    ) -> Result<Response<UploadArtifactsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut build_id = None;
        let mut data = Vec::new();
        while let Some(m) = stream.message().await? {
            match m.part {
                Some(Part::Begin(lease)) => build_id = Some(lease.build_id),
                Some(Part::Data(d)) => data.extend_from_slice(&d),
                None => {}
            }
        }
        let build_id = build_id.ok_or_else(|| Status::invalid_argument("no begin"))?;
        let response = UploadArtifactsResponse {
            digest: digest(&data),
            size: data.len() as u64,
        };
        self.seen
            .lock()
            .expect("seen")
            .artifacts
            .push((build_id, data));
        Ok(Response::new(response))
    }

    // Build caches are tested against the real coordinator (tests/tests/caches.rs); these
    // builds have none.
    async fn lookup_cache(
        &self,
        _: Request<LookupCacheRequest>,
    ) -> Result<Response<CacheEntry>, Status> {
        Err(Status::unimplemented("no caches here"))
    }

    async fn has_blobs(
        &self,
        _: Request<HasBlobsRequest>,
    ) -> Result<Response<HasBlobsResponse>, Status> {
        Err(Status::unimplemented("no caches here"))
    }

    async fn upload_blob(
        &self,
        _: Request<Streaming<DataChunk>>,
    ) -> Result<Response<UploadArtifactsResponse>, Status> {
        Err(Status::unimplemented("no caches here"))
    }

    async fn save_cache(
        &self,
        _: Request<SaveCacheRequest>,
    ) -> Result<Response<SaveCacheResponse>, Status> {
        Err(Status::unimplemented("no caches here"))
    }
}

fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(contents.len() as u64);
        builder
            .append_data(&mut header, path, contents.as_bytes())
            .expect("append");
    }
    builder.into_inner().expect("tar")
}

const BUILDSPEC: &str = r#"version: 0.2
env:
  exported-variables: [GREETING]
phases:
  build:
    commands:
      - echo "building $CODEBUILD_BUILD_ID"
      - export GREETING=hi
      - cp hello.txt out.txt
artifacts:
  files:
    - out.txt
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_runs_and_is_reported_with_its_log_and_artifacts() {
    let engine = common::engine().await;
    let source = tar_of(&[("buildspec.yml", BUILDSPEC), ("hello.txt", "hello\n")]);
    let source_digest = digest(&source);
    let good = Assignment {
        build_id: "agent-test:0d7ab2b6-5c58-4f7e-9a43-8f6a0f1c0001".into(),
        epoch: 3,
        build_number: 12,
        project_name: "agent-test".into(),
        source: Some(kiln_proto::v1::assignment::Source::SourceDigest(
            source_digest.clone(),
        )),
        timeout_in_minutes: 5,
        ..Default::default()
    };
    let invalid = Assignment {
        build_id: "agent-test:0d7ab2b6-5c58-4f7e-9a43-8f6a0f1c0002".into(),
        epoch: 1,
        project_name: "agent-test".into(),
        buildspec: "version: 0.2\nphases:\n  biuld:\n    commands: [true]\n".into(),
        ..Default::default()
    };
    let (completed_tx, mut completed_rx) = mpsc::unbounded_channel();
    let fake = FakeCoordinator {
        assignments: Arc::new(Mutex::new(vec![good.clone(), invalid.clone()])),
        sources: Arc::new(BTreeMap::from([(source_digest, source)])),
        seen: Arc::default(),
        completed: completed_tx,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let config = AgentConfig {
        coordinator: format!("http://{address}"),
        join_token: Some("tok".into()),
        worker_id: "test-worker".into(),
        labels: BTreeMap::from([("pool".into(), "test".into())]),
        slots: 2,
        default_image: common::IMAGE.into(),
        secrets: SecretStore::default(),
        owner: common::OWNER.into(),
        policy: Default::default(),
        pids_limit: kiln_worker::docker::convert::DEFAULT_PIDS,
    };
    let drain = CancellationToken::new();
    let agent = tokio::spawn(run_agent(config, engine, drain.clone()));

    let mut reports = BTreeMap::new();
    while reports.len() < 2 {
        let c = tokio::time::timeout(Duration::from_secs(120), completed_rx.recv())
            .await
            .expect("the builds are reported within two minutes")
            .expect("report");
        reports.insert(c.build_id.clone(), c);
    }
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the agent exits once drained")
        .expect("agent task")
        .expect("agent");
    server.abort();

    let seen = fake.seen.lock().expect("seen");
    assert_eq!(
        seen.authorization.first().map(String::as_str),
        Some("Bearer tok")
    );
    let log_of = |id: &str| {
        let mut chunks: Vec<(u64, Vec<u8>)> = seen
            .messages
            .iter()
            .filter_map(|m| match &m.kind {
                Some(In::Log(l)) if l.build_id == id => Some((l.seq, l.data.clone())),
                _ => None,
            })
            .collect();
        chunks.sort();
        chunks.dedup_by_key(|(seq, _)| *seq);
        for (i, (seq, _)) in chunks.iter().enumerate() {
            assert_eq!(*seq, i as u64, "chunks are numbered without gaps");
        }
        let text: Vec<u8> = chunks.into_iter().flat_map(|(_, d)| d).collect();
        (String::from_utf8_lossy(&text).into_owned(), text.len())
    };

    let ok = &reports[&good.build_id];
    let (log, _) = log_of(&good.build_id);
    assert_eq!(ok.build_status, "SUCCEEDED", "log:\n{log}");
    assert_eq!(ok.epoch, 3);
    assert!(
        log.contains(&format!("building {}", good.build_id)),
        "{log}"
    );
    assert!(ok.log_chunks > 0);
    let phases: Vec<&str> = ok.phases.iter().map(|p| p.phase_type.as_str()).collect();
    assert!(
        phases.contains(&"BUILD") && phases.contains(&"UPLOAD_ARTIFACTS"),
        "{phases:?}"
    );
    assert!(ok.phases.iter().all(|p| p.start_time_ms > 0));
    assert_eq!(ok.exported_environment_variables.len(), 1);
    assert_eq!(ok.exported_environment_variables[0].value, "hi");
    let started: Vec<&str> = seen
        .messages
        .iter()
        .filter_map(|m| match &m.kind {
            Some(In::PhaseStarted(p)) if p.build_id == good.build_id => Some(p.phase_type.as_str()),
            _ => None,
        })
        .collect();
    assert!(started.contains(&"BUILD"), "{started:?}");
    let (_, tar) = seen
        .artifacts
        .iter()
        .find(|(id, _)| *id == good.build_id)
        .expect("artifacts uploaded");
    assert_eq!(ok.artifacts_size, tar.len() as u64);
    assert_eq!(ok.artifacts_digest, digest(tar));
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut found = None;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").to_str() == Some("primary/out.txt") {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read");
            found = Some(text);
        }
    }
    assert_eq!(found.as_deref(), Some("hello\n"));

    let bad = &reports[&invalid.build_id];
    assert_eq!(bad.build_status, "FAILED");
    let download = bad
        .phases
        .iter()
        .find(|p| p.phase_type == "DOWNLOAD_SOURCE")
        .expect("DOWNLOAD_SOURCE");
    assert_eq!(download.contexts[0].status_code, "YAML_FILE_ERROR");
    assert!(
        download.contexts[0].message.starts_with("buildspec:3:3:"),
        "{:?}",
        download.contexts
    );
    let (log, _) = log_of(&invalid.build_id);
    assert!(log.contains("YAML_FILE_ERROR"), "{log}");
    assert!(
        seen.messages
            .iter()
            .any(|m| matches!(m.kind, Some(In::Draining(_)))),
        "the agent says it drains"
    );
}
