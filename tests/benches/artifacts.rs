//! Artifacts against `cp`, on the same data in the same run: a build writes a `node_modules`-like
//! tree of 20 KiB files (1 GiB by default; `KILN_BENCH_MB` changes it) and names it as its
//! artifacts, on a real `kiln coordinator` and `kiln worker`, once with the local-directory store
//! and once with a real S3-compatible server (`s3s-fs`).
//!
//! - Upload: from the start of UPLOAD_ARTIFACTS until the build is recorded complete, less the
//!   container's teardown (FINALIZING): the files leave the container, are checked and summed,
//!   and their tar goes to the coordinator and into the store. Baseline: `docker cp` of the same
//!   tree out of a container of the same image, just before the build and again after it (the
//!   upload is set against their mean).
//! - Download: `kiln artifacts ID -o DIR` (fetched, checked against its digest, extracted).
//!   Baseline: `cp -a` of the tree `docker cp` brought out, just before and again after (the
//!   download is set against their mean; creating files costs more on a file system where many
//!   were just deleted, so nothing is deleted until the end).
//!
//! Figures are throughput relative to the baseline (its time divided by Kiln's: 1.0 is as fast
//! as `cp`). Needs Docker and the build image (`deploy/build-image.sh`) and `s3s-fs`.
//!
//!   cargo build -p kiln --release && cargo bench -p kiln-tests --bench artifacts

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_proto::v1::Build;
use kiln_tests::bench::{ratio, secs, settle};
use kiln_tests::s3::{self, S3Server};
use kiln_tests::{
    bench_data_script, checkout, client, docker, kiln, start, start_coordinator, start_worker,
    wait_complete, Container,
};

fn main() {
    let mb = kiln_tests::bench_setting("KILN_BENCH_MB", 1024);
    let work = kiln_tests::bench_work_dir();
    let source = Container::sleeping("artifacts-bench");
    let c = source.0.as_str();
    docker(&["exec", c, "sh", "-c", &bench_data_script("/data", mb, true)]);
    // Read once, unmeasured: the first read of files just written is slower on some storage.
    docker(&[
        "exec",
        c,
        "sh",
        "-c",
        "tar -cf - /data/tree 2>/dev/null | wc -c",
    ]);
    let copied = work.path().join("cp-out");
    let first = docker_cp(c, &copied);
    let files = count_files(&copied);
    println!(
        "{files} files, {mb} MiB: baseline docker cp out of the container {}",
        secs(first)
    );
    let s3 = S3Server::start();
    let s3_config = format!(
        "[store]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3.endpoint(),
        s3::BUCKET,
        s3::ACCESS_KEY,
        s3::SECRET_KEY
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (label, config) in [
        ("local directory", ""),
        ("S3 (s3s-fs on loopback)", &s3_config),
    ] {
        let data = tempfile::tempdir_in(work.path()).expect("data dir");
        let config_file = data.path().join("coordinator.toml");
        std::fs::write(&config_file, config).expect("config");
        let (_coordinator, addr) = start_coordinator(
            data.path(),
            &["--config", config_file.to_str().expect("utf-8")],
        );
        let _worker = start_worker("bench-artifacts", addr, &[]);
        let buildspec = format!(
            "version: 0.2\nphases:\n  build:\n    commands:\n      - |\n        {} && sync\nartifacts:\n  files:\n    - 'out/tree/**/*'\n",
            bench_data_script("out", mb, true)
        );
        let src = checkout(&[("buildspec.yml", &buildspec)]);
        // docker cp just before the build and again after it; the upload is set against their
        // mean, as this machine's speed drifts within a run.
        let base_before = docker_cp(c, &work.path().join(format!("cp-before-{}", label.len())));
        let id = start(addr, src.path(), &[]);
        let build = runtime.block_on(async {
            let mut c = client(addr, None).await;
            wait_complete(&mut c, &id, Duration::from_secs(3600)).await
        });
        assert_eq!(build.build_status, "SUCCEEDED", "{build:?}");
        let up = upload_time(&build);
        let base_after = docker_cp(c, &work.path().join(format!("cp-after-{}", label.len())));
        let base_up = (base_before + base_after) / 2;
        // cp -a just before the download and again after it, on the file system as it is
        // then: creating files costs more there after many were deleted, so nothing is deleted
        // before the end; the download is set against their mean.
        let base_down_before = cp_a(
            &copied,
            &work.path().join(format!("cp-a-before-{}", label.len())),
        );
        let out = work.path().join(format!("download-{}", label.len()));
        let server = format!("http://{addr}");
        settle();
        let t = Instant::now();
        let got = kiln(
            &[
                "artifacts",
                &id,
                "-o",
                out.to_str().expect("utf-8"),
                "--server",
                &server,
            ],
            &[],
        );
        let down = t.elapsed();
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        let downloaded = count_files(&out);
        assert_eq!(downloaded, files, "every file downloaded");
        let base_down_after = cp_a(
            &copied,
            &work.path().join(format!("cp-a-after-{}", label.len())),
        );
        let base_down = (base_down_before + base_down_after) / 2;
        println!(
            "  {label}: upload {} ({:.2}x the throughput of docker cp, {} before and {} after), download {} ({:.2}x the throughput of cp -a, {} before and {} after)",
            secs(up),
            ratio(base_up, up),
            secs(base_before),
            secs(base_after),
            secs(down),
            ratio(base_down, down),
            secs(base_down_before),
            secs(base_down_after)
        );
    }
}

/// `docker cp` of the tree out of container `c` to `copied`; returns its time.
fn docker_cp(c: &str, copied: &Path) -> Duration {
    settle();
    let t = Instant::now();
    docker(&[
        "cp",
        &format!("{c}:/data/tree"),
        copied.to_str().expect("utf-8"),
    ]);
    t.elapsed()
}

/// `cp -a` of `from` to `to`; returns its time.
fn cp_a(from: &Path, to: &Path) -> Duration {
    settle();
    let t = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success(), "cp -a");
    t.elapsed()
}

/// From the start of UPLOAD_ARTIFACTS to the build's end, without FINALIZING (the container's
/// removal, which the upload follows).
fn upload_time(build: &Build) -> Duration {
    let phase = |name: &str| {
        build
            .phases
            .iter()
            .find(|p| p.phase_type == name)
            .unwrap_or_else(|| panic!("no {name} phase in {build:?}"))
    };
    let upload = phase("UPLOAD_ARTIFACTS");
    let finalizing = phase("FINALIZING");
    let ms =
        (upload.end_time_ms - upload.start_time_ms) + (build.end_time_ms - finalizing.end_time_ms);
    Duration::from_millis(ms.max(0) as u64)
}

fn count_files(dir: &Path) -> u64 {
    let out = Command::new("find")
        .arg(dir)
        .args(["-type", "f"])
        .output()
        .expect("find");
    out.stdout.iter().filter(|&&b| b == b'\n').count() as u64
}
