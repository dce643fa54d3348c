//! Timeout, stop, resource limits and teardown: nothing is left behind, whatever the outcome.

mod common;

use std::time::Duration;

use common::{checkout, job, leftovers, run, run_with};
use kiln_buildspec::routing::PhaseType::*;
use kiln_buildspec::routing::Status::*;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn timeout_kills_the_running_item_skips_finally_and_artifacts() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo started; sleep 120\n    finally:\n      - echo finally-ran\n  post_build:\n    commands:\n      - echo post-ran\nartifacts:\n  files:\n    - buildspec.yml\n",
        &[],
        |job| job.timeout = Duration::from_secs(8),
    )
    .await;
    assert_eq!(ran.status(), TimedOut, "{}", ran.log);
    assert_eq!(
        ran.phase_types(),
        vec![
            Provisioning,
            DownloadSource,
            Install,
            PreBuild,
            Build,
            Finalizing
        ]
    );
    assert!(ran.phases().contains(&(Build, TimedOut)));
    assert_eq!(ran.context(Build).0, "BUILD_TIMED_OUT");
    ran.assert_log("started");
    assert!(!ran.log.contains("finally-ran\n") && !ran.log.contains("post-ran\n"));
    assert!(ran.record.artifacts.is_none());
    assert!(leftovers(&ran.record.id).await.is_empty());
}

#[tokio::test]
async fn stop_ends_the_build_stopped() {
    let dir = checkout(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo started; sleep 120\n",
        &[],
    );
    let job = job(dir.path());
    let cancel = CancellationToken::new();
    let capture = common::Capture::default();
    // Stop once the command is running, however long provisioning took.
    let (stopper, log) = (cancel.clone(), capture.clone());
    tokio::spawn(async move {
        while !log.text().contains("\nstarted\n") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stopper.cancel();
    });
    let record = kiln_worker::run_build(
        common::engine().await,
        job,
        Box::new(capture.clone()),
        cancel,
        common::OWNER,
    )
    .await;
    let ran = common::Ran {
        record,
        log: capture.text(),
        dir,
    };
    assert_eq!(ran.status(), Stopped, "{}", ran.log);
    assert!(ran.phases().contains(&(Build, Stopped)));
    assert_eq!(ran.context(Build).0, "BUILD_STOPPED");
    assert_eq!(*ran.phase_types().last().expect("phases"), Finalizing);
    assert!(leftovers(&ran.record.id).await.is_empty());
}

/// A stop that lands at any moment of PROVISIONING (here: at once and after 0-400 ms) ends the
/// build STOPPED with nothing left: no Docker create is cut off in flight to finish after the
/// teardown.
#[tokio::test]
async fn a_stop_during_provisioning_leaves_nothing() {
    for delay_ms in [0, 20, 60, 120, 200, 400] {
        let dir = checkout(
            "version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 30\n",
            &[],
        );
        let job = job(dir.path());
        let id = job.build_id.clone();
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            stopper.cancel();
        });
        let ran = common::run_job(job, dir, cancel).await;
        assert_eq!(ran.status(), Stopped, "after {delay_ms} ms: {}", ran.log);
        assert!(
            leftovers(&id).await.is_empty(),
            "stopped after {delay_ms} ms: {:?}",
            leftovers(&id).await
        );
    }
}

#[tokio::test]
async fn nothing_is_left_after_success_failure_or_a_provisioning_error() {
    let ok = run("version: 0.2\nphases:\n  build:\n    commands:\n      - echo ok\n").await;
    let failed = run("version: 0.2\nphases:\n  install:\n    commands:\n      - exit 1\n").await;
    let bad_image = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo ok\n",
        &[],
        |job| job.image = common::UNPULLABLE_IMAGE.into(),
    )
    .await;
    assert_eq!(
        (ok.status(), failed.status(), bad_image.status()),
        (Succeeded, Failed, Failed)
    );
    for ran in [ok, failed, bad_image] {
        assert!(
            leftovers(&ran.record.id).await.is_empty(),
            "{} left objects",
            ran.record.id
        );
    }
}

#[tokio::test]
async fn containers_get_their_limits_and_their_own_network() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max\n      - cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max\n",
        &[],
        |job| {
            job.limits.memory_bytes = 512 << 20;
            job.limits.pids = 300;
        },
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log(&format!("\n{}\n", 512u64 << 20));
    ran.assert_log("\n300\n");
}

#[tokio::test]
async fn out_of_memory_is_reported_as_such() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - head -c 400m /dev/zero | tail > /dev/null\n",
        &[],
        |job| job.limits.memory_bytes = 64 << 20,
    )
    .await;
    assert_eq!(ran.status(), Failed, "{}", ran.log);
    let (code, message) = ran.context(Build);
    assert_eq!(code, "COMMAND_EXECUTION_ERROR");
    assert!(message.contains("out of memory"), "{message}");
}

/// A log sink that fails the way a bug in the runner would: by panicking mid-build.
struct PanickingSink;

impl kiln_worker::log::LogSink for PanickingSink {
    fn phase(&mut self, phase: kiln_buildspec::routing::PhaseType) {
        if phase == Build {
            panic!("injected failure at the start of BUILD");
        }
    }
    fn write(&mut self, _bytes: &[u8]) {}
}

#[tokio::test]
async fn a_panic_in_the_runner_still_tears_down_and_ends_fault() {
    let dir = checkout(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n",
        &[],
    );
    let job = job(dir.path());
    let record = kiln_worker::run_build(
        common::engine().await,
        job,
        Box::new(PanickingSink),
        CancellationToken::new(),
        common::OWNER,
    )
    .await;
    assert_eq!(record.build_status, Fault);
    assert!(record.build_complete);
    assert!(
        leftovers(&record.id).await.is_empty(),
        "container or network left after a panic"
    );
}
