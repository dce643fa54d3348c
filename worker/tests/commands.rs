//! Semantics §3: how command items run and what carries over between them.

mod common;

use common::{run, run_with};
use kiln_buildspec::routing::PhaseType::*;
use kiln_buildspec::routing::Status::*;

#[tokio::test]
async fn directory_and_variables_carry_over_between_items_and_phases() {
    let ran = run(r#"version: 0.2
phases:
  install:
    commands:
      - pwd
      - mkdir -p /tmp/work && cd /tmp/work
      - PLAIN=plain-value
      - export EXPORTED=exported-value
      - |
        MULTI='line one
        line two'
  build:
    commands:
      - echo "cwd=$(pwd) plain=$PLAIN exported=$EXPORTED"
      - printf '%s\n' "$MULTI" | wc -l
      - sh -c 'echo child sees plain=${PLAIN:-unexported} exported=$EXPORTED'
"#)
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("pwd\n/codebuild/output/src1/src\n");
    ran.assert_log("cwd=/tmp/work plain=plain-value exported=exported-value");
    ran.assert_log("wc -l\n2\n");
    // Plain assignments stay shell variables, as in the item that made them.
    ran.assert_log("child sees plain=unexported exported=exported-value");
}

#[tokio::test]
async fn functions_aliases_options_traps_and_umask_do_not_carry_over() {
    let ran = run(r#"version: 0.2
env:
  shell: bash
phases:
  build:
    commands:
      - greet() { echo hi; }; set -e; umask 077; trap 'echo trapped' USR1; ARR=(a b c); echo "arr=${ARR[1]}"
      - type greet >/dev/null 2>&1 && echo fn-kept || echo fn-gone
      - case $- in *e*) echo errexit-kept;; *) echo errexit-gone;; esac
      - echo "umask=$(umask)"
      - echo "arr=${ARR[1]:-gone}"
"#)
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("arr=b\n");
    ran.assert_log("fn-gone");
    ran.assert_log("errexit-gone");
    ran.assert_log("umask=0022");
    ran.assert_log("arr=gone");
}

#[tokio::test]
async fn a_multi_line_item_fails_only_when_its_last_statement_fails() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - |\n        false\n        echo still-going\n      - |\n        echo last-fails\n        false\n      - echo never\n").await;
    assert_eq!(ran.status(), Failed);
    ran.assert_log("still-going");
    ran.assert_log("last-fails");
    assert!(!ran.log.contains("never\n"));
}

#[tokio::test]
async fn exit_zero_ends_only_that_item() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - X=1; exit 0; echo unreachable\n      - echo next-ran x=$X\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert!(!ran.log.contains("\nunreachable\n"));
    ran.assert_log("next-ran x=1");
}

#[tokio::test]
async fn first_failure_skips_commands_then_finally_runs_and_stops_at_its_own_failure() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - echo one\n      - exit 2\n      - echo skipped-command\n    finally:\n      - echo finally-one\n      - exit 5\n      - echo skipped-finally\n").await;
    assert_eq!(ran.status(), Failed);
    ran.assert_log("one\n");
    ran.assert_log("finally-one");
    assert!(!ran.log.contains("skipped-command\n"));
    assert!(!ran.log.contains("skipped-finally\n"));
    let (_, message) = ran.context(Build);
    assert_eq!(
        message,
        "Error while executing command: exit 2. Reason: exit status 2"
    );
}

#[tokio::test]
async fn a_failing_finally_fails_the_phase() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - echo ok\n    finally:\n      - exit 7\n").await;
    assert_eq!(ran.status(), Failed);
    assert!(ran.phases().contains(&(Build, Failed)));
}

#[tokio::test]
async fn background_processes_outlive_their_item() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 300 &\n      - nohup sh -c 'sleep 1; echo done > /tmp/bg' > /dev/null 2>&1 &\n      - for i in $(seq 50); do [ -f /tmp/bg ] && break; sleep 0.1; done; cat /tmp/bg\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("cat /tmp/bg\ndone\n");
    assert!(ran.duration(Build) < 60, "sleep 300 was waited for");
}

#[tokio::test]
async fn default_shell_is_sh_and_bash_is_available_on_request() {
    let sh = run("version: 0.2\nphases:\n  build:\n    commands:\n      - '[[ 1 == 1 ]] && echo bash-syntax'\n").await;
    assert_eq!(sh.status(), Failed, "dash has no [[: {}", sh.log);
    let bash = run("version: 0.2\nenv:\n  shell: bash\nphases:\n  build:\n    commands:\n      - '[[ 1 == 1 ]] && echo bash-syntax'\n").await;
    assert_eq!(bash.status(), Succeeded, "{}", bash.log);
    bash.assert_log("bash-syntax");
}

#[tokio::test]
async fn run_as_runs_items_as_that_user_with_the_state_kept() {
    let ran = run(r#"version: 0.2
phases:
  install:
    commands:
      - whoami
      - cd /tmp && CARRIED=yes
  build:
    run-as: codebuild-user
    commands:
      - echo "user=$(whoami) cwd=$(pwd) carried=$CARRIED home=$HOME"
      - touch /tmp/by-user
  post_build:
    commands:
      - echo "back to $(whoami) home=$HOME owner=$(stat -c %U /tmp/by-user)"
"#)
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("whoami\nroot\n");
    ran.assert_log("user=codebuild-user cwd=/tmp carried=yes home=/home/codebuild-user");
    ran.assert_log("back to root home=/root owner=codebuild-user");
}

#[tokio::test]
async fn global_run_as_applies_to_every_phase() {
    let ran = run("version: 0.2\nrun-as: codebuild-user\nphases:\n  install:\n    commands:\n      - whoami\n  build:\n    commands:\n      - id -un\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(
        ran.log.matches("\ncodebuild-user\n").count(),
        2,
        "{}",
        ran.log
    );
}

#[tokio::test]
async fn version_0_1_runs_every_item_in_a_fresh_shell() {
    let ran = run("version: 0.1\nenvironment_variables:\n  plaintext:\n    GIVEN: given\nphases:\n  build:\n    commands:\n      - cd /tmp; X=1\n      - echo \"cwd=$(pwd) x=${X:-unset} given=$GIVEN\"\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("cwd=/codebuild/output/src1/src x=unset given=given");
}

#[tokio::test]
async fn empty_and_missing_phases_succeed() {
    let ran = run("version: 0.2\nphases:\n  install:\n    runtime-versions:\n      nodejs: 18\n  build:\n    commands:\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("No commands found for phase name: install");
    ran.assert_log("nodejs: 18 requested");
}

#[tokio::test]
async fn numbers_and_booleans_run_as_written() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - true\n      - 'echo yes: it works'\n",
        &[],
        |_| {},
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("Running command true\n");
    ran.assert_log("yes: it works");
}

#[tokio::test]
async fn stderr_is_logged_in_order_with_stdout() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - echo out1; echo err1 >&2; echo out2; echo err2 >&2\n").await;
    ran.assert_log("out1\nerr1\nout2\nerr2\n");
}

#[tokio::test]
async fn items_run_as_root_even_when_the_image_sets_user() {
    common::engine().await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {}\nUSER codebuild-user\n", common::IMAGE),
    )
    .expect("dockerfile");
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", "kiln-test/user-image:1"])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker CLI");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - whoami\n",
        &[],
        |job| job.image = "kiln-test/user-image:1".into(),
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("whoami\nroot\n");
}

#[tokio::test]
async fn state_survives_big_values_traps_redirections_xtrace_and_background_output() {
    let ran = run(r#"version: 0.2
env:
  shell: bash
  variables:
    KEEP: kept
phases:
  build:
    commands:
      - BIG=$(head -c 140000 /dev/zero | tr '\0' a); cd /tmp
      - echo "big=${#BIG} keep=$KEEP src=$CODEBUILD_SRC_DIR cwd=$(pwd)"
      - trap 'echo user-trap-ran' EXIT; TRAPPED=yes
      - exec > /tmp/redirected.log 2>&1; echo into-file; REDIRECTED=yes
      - set -x; TRACED=yes
      - (for i in $(seq 1 20000); do echo tick; done) & BACKGROUND=yes
      - wait; unset LANG; export -n KEEP
      - echo "trapped=$TRAPPED redirected=$REDIRECTED traced=$TRACED background=$BACKGROUND lang=${LANG-unset}"
      - sh -c 'echo child keep=${KEEP-unexported}'; cat /tmp/redirected.log
"#)
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("big=140000 keep=kept src=/codebuild/output/src1/src cwd=/tmp\n");
    ran.assert_log("user-trap-ran\n");
    ran.assert_log("trapped=yes redirected=yes traced=yes background=yes lang=unset\n");
    ran.assert_log("child keep=unexported\ninto-file\n");
    assert!(
        !ran.log.contains("KILN-END"),
        "the marker stays out of the log"
    );
    assert!(
        !ran.log.contains("__kiln_dump"),
        "the wrapper is not traced"
    );
}

#[tokio::test]
async fn a_deleted_working_directory_does_not_break_later_items() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p /tmp/gone && cd /tmp/gone\n      - rm -rf /tmp/gone\n      - pwd\n  post_build:\n    commands:\n      - echo post-ran\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("(it is gone or not accessible); running in /codebuild/output/src1/src\n");
    ran.assert_log("\npost-ran\n");
}

#[tokio::test]
async fn output_without_a_final_newline_does_not_run_into_the_next_line() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - printf 'no newline'\n      - echo after\n").await;
    ran.assert_log("no newline\n[Container] ");
}

#[tokio::test]
async fn cache_and_reports_are_logged_and_never_fail_the_build() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\nreports:\n  unit:\n    files:\n      - 'reports/*.xml'\ncache:\n  paths:\n    - /root/.m2/**/*\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("Cache not used: caching is off for this build");
    ran.assert_log("Report group unit: test reports are not uploaded");
}

#[tokio::test]
async fn an_item_that_replaces_the_shell_ends_when_its_process_does() {
    // `exec` replaces the wrapper, and the background sleep keeps the output pipes open: the
    // item still ends with its own process, with Docker's exit status.
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 60 & exec sh -c 'exit 3'\n      - echo never\n").await;
    assert_eq!(ran.status(), Failed, "{}", ran.log);
    assert_eq!(
        ran.context(Build).1,
        "Error while executing command: sleep 60 & exec sh -c 'exit 3'. Reason: exit status 3"
    );
    assert!(ran.duration(Build) < 30, "waited for the background sleep");
}

#[tokio::test]
async fn background_jobs_keep_logging_after_their_command_ends() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - (sleep 1; echo late-background-output) & echo started\n      - sleep 3; echo next-done\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    let late = ran
        .log
        .find("late-background-output\n")
        .expect("background output logged");
    let next = ran.log.find("\nnext-done\n").expect("next item");
    assert!(
        late < next,
        "logged while the next command ran:\n{}",
        ran.log
    );
}

#[tokio::test]
async fn an_item_using_kiln_s_fd_does_not_leak_the_end_marker() {
    let ran = run("version: 0.2\nphases:\n  build:\n    commands:\n      - exec 8>&1; I=1\n      - echo \"i=$I\"\n").await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("\ni=1\n");
    assert!(!ran.log.contains("KILN-END"), "{}", ran.log);
}
