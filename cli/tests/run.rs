//! `kiln run` and `kiln lint` as a user runs them: the real binary, real Docker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env(
        "XDG_STATE_HOME",
        std::env::temp_dir().join("kiln-cli-tests-state"),
    );
    cmd
}

/// `kiln run ARGS... DIR`, to completion.
fn kiln_run(args: &[&str], dir: &Path) -> Output {
    kiln()
        .arg("run")
        .args(args)
        .arg(dir)
        .output()
        .expect("kiln runs")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn checkout(buildspec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("buildspec.yml"), buildspec).expect("write");
    dir
}

/// Path, size, mode and modification time of everything under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u32, std::time::SystemTime)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = path.symlink_metadata().expect("meta");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let modified = meta.modified().expect("mtime");
            out.insert(path, (meta.len(), meta.permissions().mode(), modified));
        }
    }
    out
}

#[test]
fn the_example_succeeds_with_artifacts_json_and_an_untouched_source() {
    let source = examples().join("hello");
    let before = snapshot(&source);
    let out = tempfile::tempdir().expect("out");
    let out_dir = out.path().display().to_string();
    let result = kiln_run(&["--json", "-a", &out_dir], &source);
    assert!(result.status.success(), "stderr:\n{}", text(&result.stderr));
    let record: serde_json::Value =
        serde_json::from_slice(&result.stdout).expect("one JSON object on stdout");
    assert_eq!(record["buildStatus"], "SUCCEEDED");
    assert_eq!(record["currentPhase"], "COMPLETED");
    assert!(record["id"].as_str().expect("id").starts_with("hello:"));
    assert!(record["buildNumber"].as_u64().expect("number") >= 1);
    assert_eq!(record["environment"]["image"], "kiln/build-image:bookworm");
    assert_eq!(record["environment"]["computeType"], "BUILD_GENERAL1_SMALL");
    let phases: Vec<&str> = record["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["phaseType"].as_str().expect("phaseType"))
        .collect();
    assert_eq!(
        phases,
        [
            "SUBMITTED",
            "QUEUED",
            "PROVISIONING",
            "DOWNLOAD_SOURCE",
            "INSTALL",
            "PRE_BUILD",
            "BUILD",
            "POST_BUILD",
            "UPLOAD_ARTIFACTS",
            "FINALIZING"
        ]
    );
    for p in record["phases"].as_array().expect("phases") {
        assert!(
            p["startTime"].is_string()
                && p["endTime"].is_string()
                && p["durationInSeconds"].is_number()
        );
    }
    let exported = &record["exportedEnvironmentVariables"][0];
    assert_eq!(exported["name"], "ARTIFACT_NAME");
    let version = exported["value"].as_str().expect("value");
    assert!(version.starts_with("hello-1.0."), "{version}");
    assert_eq!(record["artifacts"]["name"], version);
    assert_eq!(
        record["artifacts"]["sha256sum"]
            .as_str()
            .expect("sha")
            .len(),
        64
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("primary/fox.txt")).expect("artifact"),
        "THE QUICK BROWN FOX\n"
    );
    let head = Command::new("git")
        .arg("-C")
        .arg(&source)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("git");
    assert_eq!(
        record["resolvedSourceVersion"].as_str(),
        Some(text(&head.stdout).trim()),
        "the checkout's commit"
    );
    let log = text(&result.stderr);
    assert!(
        log.contains("==> BUILD") && log.contains("Running command"),
        "the log goes to stderr with --json"
    );
    assert_eq!(
        snapshot(&source),
        before,
        "the source directory was changed"
    );
}

#[test]
fn a_failed_build_exits_1() {
    let dir = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - exit 3\n");
    let result = kiln_run(&[], dir.path());
    assert_eq!(result.status.code(), Some(1));
    let stdout = text(&result.stdout);
    assert!(
        stdout.contains("Command did not exit successfully exit 3 exit status 3"),
        "{stdout}"
    );
    assert!(text(&result.stderr).contains("FAILED"));
}

#[test]
fn invalid_input_exits_2_and_runs_nothing() {
    let bad = checkout("version: 0.2\nphases:\n  biuld:\n    commands:\n      - echo hi\n");
    let result = kiln_run(&[], bad.path());
    assert_eq!(result.status.code(), Some(2));
    let err = text(&result.stderr);
    assert!(
        err.contains("buildspec.yml:3:3: phases.biuld: unknown phase, did you mean \"build\"?"),
        "{err}"
    );
    assert!(!err.contains("PROVISIONING") && result.stdout.is_empty());

    let missing = kiln_run(&[], Path::new("/nonexistent/kiln-dir"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/kiln-dir"));

    let ok = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n");
    for args in [
        vec!["--compute", "HUGE"],
        vec!["--timeout", "10"],
        vec!["-e", "CODEBUILD_BUILD_ID=x"],
        vec!["--secret", "novalue"],
        vec!["--no-such-flag"],
    ] {
        let result = kiln_run(&args, ok.path());
        assert_eq!(
            result.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&result.stderr)
        );
        assert!(!text(&result.stderr).is_empty());
    }
}

#[test]
fn variables_secrets_files_and_timeouts_from_the_command_line() {
    let dir = checkout("version: 0.2\nenv:\n  secrets-manager:\n    PW: prod/db:password\nphases:\n  build:\n    commands:\n      - echo \"x=$X pw=$PW\"\n      - sleep 30\n");
    let secrets = dir
        .path()
        .join("..")
        .join(format!("secrets-{}.env", std::process::id()));
    std::fs::write(&secrets, "prod/db={\"password\":\"swordfish\"}\n").expect("secrets");
    let secrets_file = secrets.display().to_string();
    let result = kiln_run(
        &[
            "--json",
            "-e",
            "X=from-cli",
            "--timeout",
            "3s",
            "--secrets-file",
            &secrets_file,
        ],
        dir.path(),
    );
    std::fs::remove_file(&secrets).expect("cleanup");
    assert_eq!(result.status.code(), Some(1));
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json");
    assert_eq!(record["buildStatus"], "TIMED_OUT");
    let log = text(&result.stderr);
    assert!(log.contains("x=from-cli pw=***"), "{log}");
    assert!(!log.contains("swordfish"));
}

#[test]
fn cpu_and_memory_overrides_reach_the_container() {
    let dir = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || true\n      - cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || true\n");
    let result = kiln_run(&["--cpus", "0.5", "--memory", "256m"], dir.path());
    assert!(result.status.success(), "{}", text(&result.stderr));
    let log = text(&result.stdout);
    assert!(log.contains("268435456\n"), "256 MiB: {log}");
    // A quota of half the (100 ms) period, in either cgroup version's format.
    assert!(
        log.contains("50000 100000\n") || log.contains("\n50000\n"),
        "0.5 CPU: {log}"
    );
}

#[test]
fn build_numbers_keep_increasing_and_a_busy_store_is_not_waited_for() {
    let state = tempfile::tempdir().expect("state");
    let project = format!("numbered-{}", std::process::id());
    let run = |dir: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.env("XDG_STATE_HOME", state.path())
            .args(["run", "--json", "--project", &project])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let number = |out: &Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        record["buildNumber"].as_u64().expect("number")
    };
    let quick = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n");
    let first = number(&run(quick.path()).output().expect("kiln runs"));
    let second = number(&run(quick.path()).output().expect("kiln runs"));
    assert_eq!((first, second), (1, 2));
    let logs = state.path().join("kiln/run/logs");
    assert!(
        std::fs::read_dir(&logs).map_or(true, |mut d| d.next().is_none()),
        "the logs of finished runs are not kept"
    );

    let slow = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 5\n");
    let holder = run(slow.path()).spawn().expect("kiln starts");
    // Its build runs, so it holds the store.
    wait_for("the first run's container", || {
        !containers_of(&project).is_empty()
    });
    let beside = run(quick.path()).output().expect("kiln runs");
    assert_eq!(number(&beside), 1, "a temporary store numbers from 1");
    assert!(
        text(&beside.stderr).contains("another kiln run is using"),
        "{}",
        text(&beside.stderr)
    );
    assert_eq!(number(&holder.wait_with_output().expect("exits")), 3);
}

fn containers_of(project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=kiln.project={project}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker CLI");
    text(&out.stdout).lines().map(str::to_string).collect()
}

fn networks_of(project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("label=kiln.project={project}"),
            "--format",
            "{{.Name}}",
        ])
        .output()
        .expect("docker CLI");
    text(&out.stdout).lines().map(str::to_string).collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

#[test]
fn ctrl_c_stops_the_build_and_cleans_up() {
    let project = format!("ctrlc-{}", std::process::id());
    let dir = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 300\n");
    let child = kiln()
        .args(["run", "--json", "--project", &project])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    wait_for("the build container", || {
        !containers_of(&project).is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    signal(child.id(), "-INT");
    let result: Output = child.wait_with_output().expect("kiln exits");
    assert_eq!(result.status.code(), Some(1), "{}", text(&result.stderr));
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json");
    assert_eq!(record["buildStatus"], "STOPPED");
    assert!(containers_of(&project).is_empty() && networks_of(&project).is_empty());
}

#[test]
fn leftovers_of_a_killed_kiln_are_reaped_at_the_next_start() {
    let project = format!("killed-{}", std::process::id());
    let dir = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 300\n");
    let mut child = kiln()
        .args(["run", "--project", &project])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln starts");
    wait_for("the build container", || {
        !containers_of(&project).is_empty()
    });
    signal(child.id(), "-KILL");
    child.wait().expect("reaped child");
    assert_eq!(
        containers_of(&project).len(),
        1,
        "a killed kiln leaves its container"
    );
    assert_eq!(networks_of(&project).len(), 1);
    let quick = checkout("version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n");
    let next = kiln_run(&[], quick.path());
    assert!(next.status.success(), "{}", text(&next.stderr));
    assert!(
        containers_of(&project).is_empty(),
        "the next kiln run removes the leftover container"
    );
    assert!(networks_of(&project).is_empty());
}

#[test]
fn zip_packaging_writes_one_file_per_artifact() {
    let out = tempfile::tempdir().expect("out");
    let out_dir = out.path().display().to_string();
    let result = kiln_run(
        &["--packaging", "zip", "-a", &out_dir],
        &examples().join("hello"),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    let zip = std::fs::File::open(out.path().join("primary.zip")).expect("primary.zip");
    let archive = zip::ZipArchive::new(zip).expect("a valid zip");
    assert_eq!(archive.len(), 2);
}

#[test]
fn lint_reports_valid_and_invalid_files() {
    let good = checkout("version: 0.2\nenv:\n  compute-type: SMALL\nphases:\n  build:\n    commands:\n      - make\n");
    let bad = checkout("version: 0.3\nphases:\n  build:\n    commands:\n      - make\n");
    let good_file = good.path().join("buildspec.yml");
    let bad_file = bad.path().join("buildspec.yml");

    let ok = kiln().arg("lint").arg(&good_file).output().expect("lint");
    assert_eq!(ok.status.code(), Some(0));
    assert!(
        text(&ok.stderr).contains("warning"),
        "unknown env key is a warning"
    );

    let both = kiln()
        .args(["lint", "--json"])
        .arg(&good_file)
        .arg(&bad_file)
        .output()
        .expect("lint");
    assert_eq!(both.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&both.stdout).expect("json");
    assert_eq!(report["valid"], false);
    assert_eq!(report["files"][0]["valid"], true);
    assert_eq!(report["files"][1]["valid"], false);
    let d = &report["files"][1]["diagnostics"][0];
    assert_eq!((d["line"].as_u64(), d["col"].as_u64()), (Some(1), Some(10)));
    assert_eq!(d["severity"], "error");

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildspec/tests/fixtures/valid");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    all.push(examples().join("hello/buildspec.yml"));
    let corpus = kiln().arg("lint").args(&all).output().expect("lint");
    assert_eq!(corpus.status.code(), Some(0), "{}", text(&corpus.stderr));
}

#[test]
fn the_log_names_where_the_buildspec_is() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("ci")).expect("mkdir");
    let spec = "version: 0.2\nphases:\n  build:\n    commands:\n      - echo from-ci\n";
    std::fs::write(dir.path().join("ci/spec.yml"), spec).expect("write");
    let result = kiln_run(&["-b", "ci/spec.yml"], dir.path());
    assert!(result.status.success(), "stderr:\n{}", text(&result.stderr));
    let log = text(&result.stdout);
    assert!(
        log.contains("YAML location is /codebuild/output/src1/src/ci/spec.yml"),
        "{log}"
    );
    let default = kiln_run(&[], examples().join("hello").as_path());
    assert!(
        text(&default.stdout).contains("YAML location is /codebuild/output/src1/src/buildspec.yml"),
        "{}",
        text(&default.stdout)
    );
}

#[test]
fn kiln_run_restores_the_cache_of_the_previous_run() {
    let state = tempfile::tempdir().expect("state");
    let project = format!("cached-{}", std::process::id());
    let src = checkout(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - if [ -f out/stamp ]; then echo \"found $(cat out/stamp)\"; else mkdir -p out && echo first-run > out/stamp; fi\ncache:\n  paths:\n    - out/**/*\n",
    );
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env("XDG_STATE_HOME", state.path())
            .args(["run", "--project", &project])
            .arg(src.path())
            .output()
            .expect("kiln runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let first = run();
    assert!(first.contains("Cache miss"), "{first}");
    assert!(first.contains("Cache saved: 1 files"), "{first}");
    let second = run();
    assert!(second.contains("found first-run"), "{second}");
    assert!(
        second.contains("0 of 1 segments (0 bytes) uploaded"),
        "{second}"
    );
    assert!(
        !src.path().join("out").exists(),
        "the cache goes into the container, never into the checkout"
    );
    // Paths that select nothing save nothing.
    std::fs::write(
        src.path().join("buildspec.yml"),
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo none\ncache:\n  paths:\n    - nothing-here/**/*\n",
    )
    .expect("write");
    let empty = run();
    assert!(empty.contains("Cache: skipped nothing at"), "{empty}");
    assert!(
        empty.contains("Cache not saved: its paths select no files"),
        "{empty}"
    );
}
