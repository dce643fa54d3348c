//! Test harness: runs a buildspec through the real engine in a real Docker container.
//! Docker and the default image are required: a missing daemon or image fails the test loudly.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln_buildspec::routing::{PhaseType, Status};
use kiln_worker::docker::Engine;
use kiln_worker::log::LogSink;
use kiln_worker::record::BuildRecord;
use kiln_worker::BuildJob;
use tokio_util::sync::CancellationToken;

pub const IMAGE: &str = "kiln/build-image:bookworm";

/// An image that is not present and whose registry, on loopback, refuses connections: pulling it
/// fails at once and sends nothing off this machine.
pub const UNPULLABLE_IMAGE: &str = "127.0.0.1:9/kiln-test/missing:1";

/// Collects the log in memory.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl LogSink for Capture {
    fn phase(&mut self, _phase: PhaseType) {}
    fn write(&mut self, bytes: &[u8]) {
        self.0.lock().expect("log lock").extend_from_slice(bytes);
    }
}

pub async fn engine() -> Engine {
    let engine = Engine::connect()
        .await
        .expect("these tests need a running Docker daemon (DOCKER_HOST or /var/run/docker.sock)");
    engine
        .ensure_image(IMAGE)
        .await
        .unwrap_or_else(|e| panic!("{e}: build it with deploy/build-image.sh"));
    engine
}

/// A finished build: its record, log and the checkout it ran on.
pub struct Ran {
    pub record: BuildRecord,
    pub log: String,
    pub dir: tempfile::TempDir,
}

impl Ran {
    pub fn status(&self) -> Status {
        self.record.build_status
    }

    /// The phases that ran, with their statuses, in order (SUBMITTED and QUEUED left out).
    pub fn phases(&self) -> Vec<(PhaseType, Status)> {
        self.record
            .phases
            .iter()
            .filter(|p| !matches!(p.phase_type, PhaseType::Submitted | PhaseType::Queued))
            .map(|p| (p.phase_type, p.phase_status.expect("phase status")))
            .collect()
    }

    pub fn phase_types(&self) -> Vec<PhaseType> {
        self.phases().into_iter().map(|(p, _)| p).collect()
    }

    /// The first context of the last attempt of `phase`.
    pub fn context(&self, phase: PhaseType) -> (String, String) {
        let p = self
            .record
            .phases
            .iter()
            .rev()
            .find(|p| p.phase_type == phase)
            .unwrap_or_else(|| panic!("phase {phase:?} did not run"));
        let c = p
            .contexts
            .first()
            .unwrap_or_else(|| panic!("{phase:?} has no context"));
        (c.status_code.clone(), c.message.clone())
    }

    /// How long the last attempt of `phase` took, in whole seconds.
    pub fn duration(&self, phase: PhaseType) -> i64 {
        self.record
            .phases
            .iter()
            .rev()
            .find(|p| p.phase_type == phase)
            .and_then(|p| p.duration_in_seconds)
            .unwrap_or_else(|| panic!("phase {phase:?} has no duration"))
    }

    /// Asserts the log contains `needle`, printing the log when it does not.
    pub fn assert_log(&self, needle: &str) {
        assert!(
            self.log.contains(needle),
            "log lacks {needle:?}:\n{}",
            self.log
        );
    }
}

/// Writes `files` into a new checkout with `buildspec` as buildspec.yml.
pub fn checkout(buildspec: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("buildspec.yml"), buildspec).expect("write buildspec");
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write file");
    }
    dir
}

pub fn job(dir: &Path) -> BuildJob {
    let parsed = kiln_buildspec::parse_file(&dir.join("buildspec.yml"))
        .unwrap_or_else(|e| panic!("test buildspec is invalid:\n{e}"));
    BuildJob::new("test", parsed.buildspec, dir.to_path_buf(), IMAGE)
}

pub const OWNER: &str = "kiln-tests/0/0";

/// Runs `buildspec` with `files` in the checkout; `configure` adjusts the job.
pub async fn run_with(
    buildspec: &str,
    files: &[(&str, &str)],
    configure: impl FnOnce(&mut BuildJob),
) -> Ran {
    let dir = checkout(buildspec, files);
    let mut job = job(dir.path());
    configure(&mut job);
    run_job(job, dir, CancellationToken::new()).await
}

pub async fn run_job(job: BuildJob, dir: tempfile::TempDir, cancel: CancellationToken) -> Ran {
    let capture = Capture::default();
    let record = kiln_worker::run_build(
        engine().await,
        job,
        Box::new(capture.clone()),
        cancel,
        OWNER,
    )
    .await;
    Ran {
        record,
        log: capture.text(),
        dir,
    }
}

pub async fn run(buildspec: &str) -> Ran {
    run_with(buildspec, &[], |_| {}).await
}

/// Names of Docker containers and networks that belong to a build id.
pub async fn leftovers(build_id: &str) -> Vec<String> {
    let filter = format!("label=kiln.build-id={build_id}");
    let mut names = Vec::new();
    for args in [
        vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        vec![
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ],
    ] {
        let out = std::process::Command::new("docker")
            .args(&args)
            .output()
            .expect("docker CLI");
        assert!(out.status.success(), "docker {args:?} failed");
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    names
}
