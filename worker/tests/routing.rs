//! Semantics §2: every row of the failure routing table and every `on-failure` form, on real builds.

mod common;

use common::{run, run_with};
use kiln_buildspec::routing::PhaseType::{self, *};
use kiln_buildspec::routing::Status::*;

const ALL_OK: [PhaseType; 8] = [
    Provisioning,
    DownloadSource,
    Install,
    PreBuild,
    Build,
    PostBuild,
    UploadArtifacts,
    Finalizing,
];

#[tokio::test]
async fn a_passing_build_runs_every_phase() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(ran.phase_types(), ALL_OK);
    assert!(ran.phases().iter().all(|(_, s)| *s == Succeeded));
    assert_eq!(ran.record.phases[0].phase_type, Submitted);
    assert_eq!(ran.record.phases[1].phase_type, Queued);
    ran.assert_log("Running command echo hi\nhi\n");
    ran.assert_log("Phase complete: BUILD State: SUCCEEDED");
    ran.assert_log("Phase context status code:  Message: ");
}

#[tokio::test]
async fn provisioning_failure_goes_straight_to_completed() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n",
        &[],
        // A registry on loopback that refuses: the pull fails without leaving this machine.
        |job| job.image = common::UNPULLABLE_IMAGE.into(),
    )
    .await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(ran.phases(), vec![(Provisioning, Failed)]);
    let (code, message) = ran.context(Provisioning);
    assert_eq!(code, "BUILD_CONTAINER_UNABLE_TO_PULL_IMAGE");
    assert!(message.contains(common::UNPULLABLE_IMAGE), "{message}");
    assert!(message.contains("not found locally"), "{message}");
}

#[tokio::test]
async fn download_source_failure_skips_to_finalizing() {
    let ran = run_with(
        "version: 0.2\nenv:\n  parameter-store:\n    TOKEN: /CodeBuild/missing\nphases:\n  build:\n    commands:\n      - echo never\n",
        &[],
        |_| {},
    )
    .await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(
        ran.phases(),
        vec![
            (Provisioning, Succeeded),
            (DownloadSource, Failed),
            (Finalizing, Succeeded)
        ]
    );
    let (code, message) = ran.context(DownloadSource);
    assert_eq!(code, "CLIENT_ERROR");
    assert!(
        message.contains("/CodeBuild/missing") && message.contains("TOKEN"),
        "{message}"
    );
    assert!(!ran.log.contains("never\n"));
}

async fn failing_in(phase: &str) -> common::Ran {
    let mut spec = String::from("version: 0.2\nphases:\n");
    for p in ["install", "pre_build", "build", "post_build"] {
        let cmd = if p == phase { "exit 3" } else { "echo ran-$0" };
        spec.push_str(&format!(
            "  {p}:\n    commands:\n      - {}\n",
            cmd.replace("$0", p)
        ));
    }
    spec.push_str("artifacts:\n  files:\n    - buildspec.yml\n");
    run(&spec).await
}

#[tokio::test]
async fn install_failure_skips_to_finalizing() {
    let ran = failing_in("install").await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(
        ran.phase_types(),
        vec![Provisioning, DownloadSource, Install, Finalizing]
    );
    assert_eq!(
        ran.context(Install),
        (
            "COMMAND_EXECUTION_ERROR".to_string(),
            "Error while executing command: exit 3. Reason: exit status 3".to_string()
        )
    );
    ran.assert_log("Command did not exit successfully exit 3 exit status 3");
}

#[tokio::test]
async fn pre_build_failure_skips_to_finalizing() {
    let ran = failing_in("pre_build").await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(
        ran.phase_types(),
        vec![Provisioning, DownloadSource, Install, PreBuild, Finalizing]
    );
    assert!(!ran.log.contains("ran-build"));
}

#[tokio::test]
async fn build_failure_still_runs_post_build_and_uploads() {
    let ran = failing_in("build").await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(ran.phase_types(), ALL_OK);
    assert_eq!(ran.phases()[4], (Build, Failed));
    assert_eq!(ran.phases()[6], (UploadArtifacts, Succeeded));
    ran.assert_log("ran-post_build");
}

#[tokio::test]
async fn post_build_failure_still_uploads() {
    let ran = failing_in("post_build").await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(ran.phase_types(), ALL_OK);
    assert_eq!(ran.phases()[5], (PostBuild, Failed));
    assert!(ran.record.artifacts.is_some());
}

#[tokio::test]
async fn upload_failure_goes_to_finalizing() {
    let ran = run(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\nartifacts:\n  files:\n    - nothing/here/*\n",
    )
    .await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(ran.phase_types(), ALL_OK);
    assert_eq!(
        ran.context(UploadArtifacts),
        (
            "CLIENT_ERROR".to_string(),
            "no matching artifact paths found".to_string()
        )
    );
}

#[tokio::test]
async fn on_failure_continue_runs_later_phases_but_fails_the_build() {
    let ran = run(
        "version: 0.2\nphases:\n  install:\n    on-failure: CONTINUE\n    commands:\n      - exit 1\n  pre_build:\n    commands:\n      - echo succeeding=$CODEBUILD_BUILD_SUCCEEDING\n",
    )
    .await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(ran.phase_types(), ALL_OK);
    ran.assert_log("succeeding=0");
}

#[tokio::test]
async fn on_failure_abort_in_build_skips_post_build_and_upload() {
    let ran = run(
        "version: 0.2\nphases:\n  build:\n    on-failure: ABORT\n    commands:\n      - exit 1\n  post_build:\n    commands:\n      - echo post-ran\nartifacts:\n  files:\n    - buildspec.yml\n",
    )
    .await;
    assert_eq!(ran.status(), Failed);
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
    assert!(!ran.log.contains("post-ran"));
}

#[tokio::test]
async fn on_failure_retry_reruns_the_phase_with_its_starting_state() {
    // Fails on the first two tries, succeeds on the third; the counter lives in a file because
    // the state (COUNT) is reset to the phase's starting state on every retry.
    let ran = run(
        "version: 0.2\nphases:\n  build:\n    on-failure: RETRY-2\n    commands:\n      - COUNT=\"${COUNT}x\"\n      - echo try >> /tmp/tries; echo count=$COUNT\n      - test $(wc -l < /tmp/tries) -ge 3\n    finally:\n      - echo finally-ran\n",
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    let builds: Vec<_> = ran
        .phases()
        .into_iter()
        .filter(|(p, _)| *p == Build)
        .collect();
    assert_eq!(
        builds,
        vec![(Build, Failed), (Build, Failed), (Build, Succeeded)]
    );
    assert_eq!(ran.log.matches("\ncount=x\n").count(), 3, "{}", ran.log);
    assert_eq!(ran.log.matches("\nfinally-ran\n").count(), 3);
    ran.assert_log("Retrying phase BUILD (2 of 2)");
}

#[tokio::test]
async fn on_failure_retry_gives_up_after_its_count() {
    let ran = run(
        "version: 0.2\nphases:\n  pre_build:\n    on-failure: retry-1\n    commands:\n      - exit 4\n",
    )
    .await;
    assert_eq!(ran.status(), Failed);
    let tries = ran.phase_types().iter().filter(|p| **p == PreBuild).count();
    assert_eq!(tries, 2);
    assert_eq!(*ran.phase_types().last().expect("phases"), Finalizing);
    assert!(!ran.phase_types().contains(&Build));
}

#[tokio::test]
async fn on_failure_retry_regex_matches_the_output() {
    let ran = run(
        "version: 0.2\nphases:\n  build:\n    on-failure: RETRY-2-.*connection refused.*\n    commands:\n      - |\n        echo 'error: connection refused'; exit 1\n  post_build:\n    on-failure: RETRY-2-.*connection refused.*\n    commands:\n      - |\n        echo 'error: disk full'; exit 1\n",
    )
    .await;
    assert_eq!(ran.status(), Failed);
    let count = |phase| ran.phase_types().iter().filter(|p| **p == phase).count();
    assert_eq!(count(Build), 3, "matching output is retried");
    assert_eq!(count(PostBuild), 1, "other output is not");
}

#[tokio::test]
async fn retry_zero_never_retries() {
    let ran = run(
        "version: 0.2\nphases:\n  build:\n    on-failure: RETRY-0\n    commands:\n      - exit 1\n",
    )
    .await;
    assert_eq!(ran.phase_types().iter().filter(|p| **p == Build).count(), 1);
}
