//! A farm of real processes: coordinators (`kiln coordinator`), workers (`kiln worker`, running
//! builds in real Docker), clients (`kiln start`, `kiln logs`, `kiln artifacts` and gRPC), the
//! embedded store and a real `redis-server`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use kiln_proto::v1::{Build, StreamLogsRequest};
use kiln_tests::{
    channel, checkout, client, free_port, get, kiln, raw_worker, require_docker, start,
    wait_complete, Proc, RedisServer,
};

/// A buildspec whose log and artifact name its build number.
const NUMBERED: &str = r#"version: 0.2
phases:
  build:
    commands:
      - echo "building number $CODEBUILD_BUILD_NUMBER"
      - mkdir -p out && echo "artifact $CODEBUILD_BUILD_NUMBER" > out/result.txt
artifacts:
  files:
    - out/result.txt
"#;

/// A build that runs long enough to be interrupted.
fn sleeping(seconds: u32) -> String {
    format!(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo started\n      - sleep {seconds}\n      - echo done-sleeping\n"
    )
}

fn coordinator(name: &str, listen: &str, state: &str, data: &str, ttl: &str) -> (Proc, SocketAddr) {
    let (proc, addr) = Proc::kiln(
        name,
        &[
            "coordinator",
            "--listen",
            listen,
            "--state",
            state,
            "--data-dir",
            data,
            "--lease-ttl",
            ttl,
            "--redis-prefix",
            "kiln-test:",
        ],
        &[],
        true,
    );
    (proc, addr.expect("address"))
}

fn worker(id: &str, addr: SocketAddr, slots: u32) -> Proc {
    let url = format!("http://{addr}");
    let slots = slots.to_string();
    Proc::kiln(
        id,
        &[
            "worker",
            "--coordinator",
            &url,
            "--id",
            id,
            "--slots",
            &slots,
        ],
        &[],
        false,
    )
    .0
}

/// Waits until the build is running its BUILD phase.
async fn wait_phase(addr: SocketAddr, id: &str, phase: &str) -> Build {
    for _ in 0..600 {
        let b = get(addr, id).await;
        if b.current_phase == phase {
            return b;
        }
        assert!(!b.build_complete, "{id} ended before {phase}: {b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} never reached {phase}");
}

async fn full_log(addr: SocketAddr, id: &str) -> String {
    use futures_util::StreamExt;
    let mut stream = client(addr, None)
        .await
        .stream_logs(StreamLogsRequest {
            id: id.to_string(),
            from_seq: 0,
            follow: false,
        })
        .await
        .expect("StreamLogs")
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend(chunk.expect("chunk").data);
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_builds_spread_over_three_workers_with_complete_logs_and_artifacts() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let d = data.path().to_str().expect("utf-8");
    let (_coordinator, addr) = coordinator(
        "coordinator",
        "127.0.0.1:0",
        &format!("{d}/state"),
        d,
        "10s",
    );
    let _workers: Vec<Proc> = ["w1", "w2", "w3"]
        .iter()
        .map(|w| worker(w, addr, 2))
        .collect();
    let src = checkout(&[("buildspec.yml", NUMBERED)]);
    let ids: Vec<String> = (0..60).map(|_| start(addr, src.path(), &[])).collect();
    let mut c = client(addr, None).await;
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let b = wait_complete(&mut c, id, Duration::from_secs(900)).await;
        assert_eq!(b.build_status, "SUCCEEDED", "{id}: {b:?}");
        *per_worker.entry(b.worker_id.clone()).or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        3,
        "every worker ran builds: {per_worker:?}"
    );
    assert!(
        per_worker.values().all(|n| *n >= 5),
        "spread: {per_worker:?}"
    );
    let server = format!("http://{addr}");
    for id in &ids {
        let number = get(addr, id).await.build_number;
        let out = kiln(&["logs", id, "--server", &server], &[]);
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            log.contains(&format!("building number {number}")),
            "{id}: {log}"
        );
        assert!(
            log.contains("YAML location is /codebuild/output/src1/src/buildspec.yml"),
            "{id}: {log}"
        );
        assert!(
            log.contains("Phase complete: BUILD State: SUCCEEDED"),
            "{id}: {log}"
        );
        let dest = tempfile::tempdir().expect("tempdir");
        let out = kiln(
            &[
                "artifacts",
                id,
                "-o",
                dest.path().to_str().expect("utf-8"),
                "--server",
                &server,
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dest.path().join("primary/out/result.txt"))
            .expect("artifact file");
        assert_eq!(text, format!("artifact {number}\n"));
    }
    let mut numbers: Vec<u64> = Vec::new();
    for id in &ids {
        numbers.push(get(addr, id).await.build_number);
    }
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=60).collect::<Vec<u64>>(),
        "numbers never repeat"
    );
}

/// Containers of one build, running or not.
fn containers_of(build_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=kiln.build-id={build_id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_s_build_runs_elsewhere_and_its_late_reports_are_rejected() {
    use kiln_proto::v1::worker_service_client::WorkerServiceClient;
    use kiln_proto::v1::{
        coordinator_message, upload_artifacts_request, worker_message, Completed, Hello, LeaseRef,
        LogData, UploadArtifactsRequest, WorkerMessage,
    };
    use tokio_stream::StreamExt;

    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let d = data.path().to_str().expect("utf-8");
    let (_coordinator, addr) = coordinator(
        "coordinator",
        "127.0.0.1:0",
        &format!("{d}/state"),
        d,
        "1500ms",
    );
    let mut doomed = worker("doomed", addr, 1);
    let src = checkout(&[("buildspec.yml", &sleeping(6))]);
    let id = start(addr, src.path(), &[]);
    let running = wait_phase(addr, &id, "BUILD").await;
    assert_eq!(running.worker_id, "doomed");
    let stale_epoch = u64::from(running.attempt);
    doomed.kill9();
    assert!(
        !containers_of(&id).is_empty(),
        "the killed worker's container is left behind"
    );
    let _rescuer = worker("rescuer", addr, 1);
    let mut c = client(addr, None).await;
    let done = wait_complete(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(done.build_status, "SUCCEEDED", "{done:?}");
    assert_eq!(done.worker_id, "rescuer");
    assert_eq!(done.attempt, 2);
    assert!(
        done.phases
            .iter()
            .any(|p| p.contexts.iter().any(|c| c.status_code == "WORKER_LOST")),
        "the record says a worker was lost: {done:?}"
    );
    let log = full_log(addr, &id).await;
    assert!(log.contains("done-sleeping"), "{log}");

    // The dead worker's reports, replayed with its old epoch, are rejected.
    let stale = LeaseRef {
        build_id: id.clone(),
        epoch: stale_epoch,
    };
    let hello = Hello {
        worker_id: "doomed".into(),
        slots: 0,
        running: vec![stale.clone()],
        ..Hello::default()
    };
    let (tx, mut inbound) = raw_worker(addr, hello).await;
    let Some(Ok(welcome)) = inbound.next().await else {
        panic!("no welcome")
    };
    let Some(coordinator_message::Kind::Welcome(welcome)) = welcome.kind else {
        panic!("not a welcome")
    };
    assert!(
        !welcome.resumed[0].resumed,
        "the stale lease is not resumed: {welcome:?}"
    );
    let log = LogData {
        build_id: id.clone(),
        epoch: stale_epoch,
        seq: 0,
        data: b"forged\n".to_vec(),
    };
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Log(log)),
    })
    .await
    .expect("send");
    let completed = Completed {
        build_id: id.clone(),
        epoch: stale_epoch,
        build_status: "FAILED".into(),
        ..Completed::default()
    };
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Completed(completed)),
    })
    .await
    .expect("send");
    let mut rejects = 0;
    while rejects < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .expect("an answer")
            .expect("stream open")
            .expect("message");
        match message.kind {
            Some(coordinator_message::Kind::Reject(r)) => {
                assert_eq!(r.epoch, stale_epoch);
                rejects += 1;
            }
            other => panic!("expected a Reject, got {other:?}"),
        }
    }
    let upload = vec![
        UploadArtifactsRequest {
            part: Some(upload_artifacts_request::Part::Begin(stale)),
            ..Default::default()
        },
        UploadArtifactsRequest {
            part: Some(upload_artifacts_request::Part::Data(b"forged".to_vec())),
            ..Default::default()
        },
    ];
    let e = WorkerServiceClient::new(channel(addr).await)
        .upload_artifacts(tokio_stream::iter(upload))
        .await
        .expect_err("stale artifacts");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let after = get(addr, &id).await;
    assert_eq!(after.build_status, "SUCCEEDED");
    assert_eq!(after.artifacts_digest, done.artifacts_digest);
    assert!(!full_log(addr, &id).await.contains("forged"));
    drop(tx);

    // The killed worker comes back and removes what it left.
    let _back = worker("doomed", addr, 1);
    for _ in 0..100 {
        if containers_of(&id).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the restarted worker did not reap {:?}", containers_of(&id));
}

/// Kills the coordinator (SIGKILL) with builds queued and running, restarts it on the same
/// address and state: every build completes once, the running ones on their first attempt.
async fn coordinator_restart(state: &str, data: &str) {
    require_docker();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut first, addr) = coordinator("coordinator", &listen, state, data, "8s");
    let _w1 = worker("w1", addr, 2);
    let _w2 = worker("w2", addr, 2);
    let src = checkout(&[("buildspec.yml", &sleeping(4))]);
    let ids: Vec<String> = (0..8).map(|_| start(addr, src.path(), &[])).collect();
    // Four run (two per worker), four wait.
    let mut running = Vec::new();
    for id in &ids[..4] {
        running.push(wait_phase(addr, id, "BUILD").await.id);
    }
    first.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_second, addr) = coordinator("coordinator-again", &listen, state, data, "8s");
    let mut c = client(addr, None).await;
    for id in &ids {
        let b = wait_complete(&mut c, id, Duration::from_secs(300)).await;
        assert_eq!(b.build_status, "SUCCEEDED", "{id}: {b:?}");
        assert_eq!(b.attempt, 1, "{id} ran once: {b:?}");
        let log = full_log(addr, id).await;
        assert!(
            log.contains("started") && log.contains("done-sleeping"),
            "{id}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_loses_nothing_embedded() {
    let data = tempfile::tempdir().expect("tempdir");
    let d = data.path().to_str().expect("utf-8");
    coordinator_restart(&format!("{d}/state"), d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_loses_nothing_redis() {
    let redis = RedisServer::start_throwaway();
    let data = tempfile::tempdir().expect("tempdir");
    coordinator_restart(&redis.url(), data.path().to_str().expect("utf-8")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_coordinators_on_one_redis_complete_every_build_once() {
    require_docker();
    let redis = RedisServer::start_throwaway();
    let data = tempfile::tempdir().expect("tempdir");
    let d = data.path().to_str().expect("utf-8");
    let (_c1, a1) = coordinator("coordinator-1", "127.0.0.1:0", &redis.url(), d, "10s");
    let (_c2, a2) = coordinator("coordinator-2", "127.0.0.1:0", &redis.url(), d, "10s");
    let _w1 = worker("w1", a1, 2);
    let _w2 = worker("w2", a2, 2);
    let _w3 = worker("w3", a2, 1);
    let src = checkout(&[("buildspec.yml", NUMBERED)]);
    let ids: Vec<(String, SocketAddr)> = (0..20)
        .map(|i| {
            let addr = if i % 2 == 0 { a1 } else { a2 };
            (start(addr, src.path(), &[]), addr)
        })
        .collect();
    let mut c1 = client(a1, None).await;
    let mut workers = HashMap::<String, usize>::new();
    for (id, via) in &ids {
        // Read through the other coordinator than the one that started it.
        let other = if *via == a1 { a2 } else { a1 };
        let b = wait_complete(&mut c1, id, Duration::from_secs(600)).await;
        assert_eq!(b.build_status, "SUCCEEDED", "{id}: {b:?}");
        assert_eq!(b.attempt, 1, "{id} ran once");
        *workers.entry(b.worker_id).or_default() += 1;
        let log = full_log(other, id).await;
        assert!(
            log.contains(&format!("building number {}", b.build_number)),
            "{id}: {log}"
        );
    }
    assert_eq!(
        workers.len(),
        3,
        "workers of both coordinators ran builds: {workers:?}"
    );
}
