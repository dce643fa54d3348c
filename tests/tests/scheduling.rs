//! Scheduling rules with real processes: per-project concurrent limits (extra builds wait),
//! worker labels (a build no worker can run says why), StopBuild of running and queued builds,
//! the attempt limit (FAULT), drain on SIGTERM, RetryBuild and WatchBuild.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kiln_proto::v1::{RetryBuildRequest, WatchBuildRequest};
use kiln_tests::{
    apply_project, checkout, client, get, kiln, raw_worker, require_docker, start,
    start_coordinator, start_worker, wait_complete,
};

fn sleeping(seconds: u32) -> String {
    format!("version: 0.2\nphases:\n  build:\n    commands:\n      - sleep {seconds}\n      - echo slept\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn project_limits_and_labels_make_builds_wait_not_fail() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &[]);
    let _w = start_worker("w-fast", addr, &["--slots", "3", "--label", "pool=fast"]);
    let server = format!("http://{addr}");
    let project = data.path().join("project.yaml");
    apply_project(
        &server,
        &project,
        "name: limited\nenvironment:\n  workerLabels:\n    pool: fast\nconcurrentBuildLimit: 1\n",
    );
    let src = checkout(&[("buildspec.yml", &sleeping(2))]);
    let ids: Vec<String> = (0..3)
        .map(|_| start(addr, src.path(), &["--project", "limited"]))
        .collect();
    // Never two at once, though the worker has three slots.
    let mut c = client(addr, None).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut saw_reason = false;
    loop {
        let mut done = 0;
        for id in &ids {
            let b = get(addr, id).await;
            done += usize::from(b.build_complete);
            saw_reason |= b.queued_reason.contains("concurrent build limit");
        }
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "builds did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_reason, "a waiting build said why");
    // Each left the queue after the one before it ended (by the records: polling the three one
    // after another could see one end and the next start between two reads).
    let mut runs = Vec::new();
    for id in &ids {
        let b = wait_complete(&mut c, id, Duration::from_secs(1)).await;
        assert_eq!(b.build_status, "SUCCEEDED");
        let queued = b
            .phases
            .iter()
            .find(|p| p.phase_type == "QUEUED")
            .unwrap_or_else(|| panic!("no QUEUED phase: {b:?}"));
        runs.push((queued.end_time_ms, b.end_time_ms));
    }
    runs.sort();
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "the project limit of 1 holds: {runs:?}"
        );
    }

    // A project whose label no worker has waits with a reason, and can be stopped while queued.
    apply_project(
        &server,
        &project,
        "name: gpu-only\nenvironment:\n  workerLabels:\n    gpu: \"yes\"\n",
    );
    let id = start(addr, src.path(), &["--project", "gpu-only"]);
    let mut reason = String::new();
    for _ in 0..50 {
        reason = get(addr, &id).await.queued_reason;
        if !reason.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reason.contains("no connected worker has the labels gpu=yes"),
        "{reason}"
    );
    let out = kiln(&["stop", &id, "--server", &server], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = get(addr, &id).await;
    assert_eq!(
        (b.build_status.as_str(), b.build_complete),
        ("STOPPED", true)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_watch_retry_and_the_attempt_limit() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(
        data.path(),
        &["--lease-ttl", "1500ms", "--max-attempts", "1"],
    );
    let mut w = start_worker("w1", addr, &["--slots", "2"]);
    let src = checkout(&[("buildspec.yml", &sleeping(30))]);
    let id = start(addr, src.path(), &[]);
    // WatchBuild streams the changes until the end.
    let mut watch = client(addr, None)
        .await
        .watch_build(WatchBuildRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut phases = Vec::new();
    while let Some(b) = watch.next().await {
        let b = b.expect("update");
        phases.push(b.current_phase.clone());
        if b.current_phase == "BUILD" {
            break;
        }
    }
    assert!(phases.contains(&"PROVISIONING".to_string()), "{phases:?}");
    // StopBuild reaches the worker at once: the build ends STOPPED long before its sleep would.
    let server = format!("http://{addr}");
    let out = kiln(&["stop", &id, "--server", &server], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = client(addr, None).await;
    let stopped = wait_complete(&mut c, &id, Duration::from_secs(20)).await;
    assert_eq!(stopped.build_status, "STOPPED", "{stopped:?}");
    while let Some(b) = watch.next().await {
        phases.push(b.expect("update").current_phase);
    }
    assert_eq!(
        phases.last().map(String::as_str),
        Some("COMPLETED"),
        "{phases:?}"
    );

    // RetryBuild: a new build with the same source and settings.
    let mut retries = Vec::new();
    for _ in 0..2 {
        let request = RetryBuildRequest {
            id: id.clone(),
            idempotency_token: "retry-1".into(),
        };
        let response = c.retry_build(request).await.expect("retry").into_inner();
        retries.push(response.build.expect("build"));
    }
    let (retried, again) = (&retries[0], &retries[1]);
    assert_ne!(retried.id, id);
    assert_eq!(retried.retry_of, id);
    assert_eq!(retried.build_number, stopped.build_number + 1);
    assert_eq!(
        again.id, retried.id,
        "the idempotency token returns the first retry"
    );
    // With one attempt allowed, losing the worker ends the build FAULT.
    let mut running = get(addr, &retried.id).await;
    while running.current_phase != "BUILD" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        running = get(addr, &retried.id).await;
    }
    w.kill9();
    let fault = wait_complete(&mut c, &retried.id, Duration::from_secs(60)).await;
    assert_eq!(fault.build_status, "FAULT", "{fault:?}");
    let context = fault
        .phases
        .iter()
        .flat_map(|p| p.contexts.iter())
        .find(|c| c.status_code == "WORKER_LOST");
    assert!(
        context.is_some_and(|c| c.message.contains("giving up")),
        "{fault:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_worker() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &[]);
    let mut w = start_worker("drainer", addr, &["--slots", "1"]);
    let src = checkout(&[("buildspec.yml", &sleeping(3))]);
    let first = start(addr, src.path(), &[]);
    while get(addr, &first).await.current_phase != "BUILD" {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !w.terminate(Duration::from_millis(500)),
        "a draining worker waits for its build"
    );
    let second = start(addr, src.path(), &[]);
    let mut c = client(addr, None).await;
    let done = wait_complete(&mut c, &first, Duration::from_secs(60)).await;
    assert_eq!(
        done.build_status, "SUCCEEDED",
        "the running build finished: {done:?}"
    );
    for _ in 0..100 {
        if !w.running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!w.running(), "the worker exited after its build");
    let queued = get(addr, &second).await;
    assert_eq!(
        queued.build_status, "QUEUED",
        "a draining worker takes no new build: {queued:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_assignment_goes_back_to_the_queue_without_using_an_attempt() {
    use kiln_proto::v1::{
        coordinator_message, worker_message, Declined, Draining, Hello, WorkerMessage,
    };

    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &[]);
    let src = checkout(&[("buildspec.yml", &sleeping(1))]);
    let id = start(addr, src.path(), &[]);
    // A worker (speaking the protocol by hand) that declines what it is given.
    let hello = Hello {
        worker_id: "decliner".into(),
        slots: 1,
        ..Hello::default()
    };
    let (tx, mut inbound) = raw_worker(addr, hello).await;
    let assignment = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .expect("an assignment")
            .expect("open")
            .expect("message");
        if let Some(coordinator_message::Kind::Assignment(a)) = message.kind {
            break a;
        }
    };
    assert_eq!(assignment.build_id, id);
    // It drains first (so it gets nothing more), then declines: the build goes back to the queue.
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Draining(Draining {})),
    })
    .await
    .expect("send");
    let declined = Declined {
        build_id: id.clone(),
        epoch: assignment.epoch,
        reason: "busy".into(),
    };
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Declined(declined)),
    })
    .await
    .expect("send");
    let mut queued = get(addr, &id).await;
    for _ in 0..50 {
        if queued.build_status == "QUEUED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        queued = get(addr, &id).await;
    }
    assert_eq!(queued.build_status, "QUEUED", "{queued:?}");
    assert_eq!(queued.attempt, 0, "a declined assignment is no attempt");
    assert!(
        queued.queued_reason.contains("declined the build: busy"),
        "{}",
        queued.queued_reason
    );
    let _w = start_worker("taker", addr, &[]);
    let mut c = client(addr, None).await;
    let done = wait_complete(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(
        (done.build_status.as_str(), done.attempt),
        ("SUCCEEDED", 1),
        "{done:?}"
    );
    assert_eq!(done.worker_id, "taker");
}
