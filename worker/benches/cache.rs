//! Build caches against `tar | zstd`, on the same data in the same container in the same run:
//! (a) a `node_modules`-like tree of 20 KiB files and (b) one large file, 1 GiB each by default
//! (`KILN_BENCH_MB` changes it), half random bytes and half log-like text. Each is saved with the
//! worker's cache path (`kiln_worker::cache`: out of the container, cut into segments, uploaded),
//! restored into the emptied container, saved a second time unchanged, and a third time after one
//! file was added (every file read, only the segments the store lacks uploaded), through the
//! local-directory blob store and through a real S3-compatible server (`s3s-fs`). The baseline is
//! `docker exec tar -c | zstd -3 -T0` to a local file and `zstd -dc | docker exec -i tar -x` back
//! into the emptied container, just before Kiln's restore and again after it (Kiln's is set
//! against their mean). Needs Docker and the build image (`deploy/build-image.sh`).
//!
//!   cargo bench -p kiln-worker --bench cache
//!
//! `KILN_BENCH_CASE=tree` (or `file`) runs one of the two cases, `KILN_BENCH_STORE=local` (or
//! `s3`) one of the two stores.
//!
//! The store is used directly, as the coordinator uses it; the worker-to-coordinator gRPC hop of a
//! farm is not in these figures.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/direct.rs"]
mod direct;

use direct::Direct;
use kiln_cache::Backend;
use kiln_tests::s3::S3Server;
use kiln_tests::{bench_data_script, docker, Container};
use kiln_worker::cache::{self, CacheStore};
use kiln_worker::docker::Engine;

fn sh(container: &str, script: &str) {
    docker(&["exec", container, "sh", "-c", script]);
}

fn main() {
    let mb = kiln_tests::bench_setting("KILN_BENCH_MB", 1024);
    let container = Container::sleeping("cache-bench");
    let c = container.0.as_str();
    let only = std::env::var("KILN_BENCH_CASE").ok();
    let runs = |case: &str| only.as_deref().is_none_or(|only| only == case);
    if runs("tree") {
        sh(c, &bench_data_script("/data", mb, true));
    }
    if runs("file") {
        sh(c, &bench_data_script("/data/file", mb, false));
    }
    let files = docker(&[
        "exec",
        c,
        "sh",
        "-c",
        "find /data/tree -type f 2>/dev/null | wc -l",
    ]);
    let work = kiln_tests::bench_work_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = runtime.block_on(Engine::connect()).expect("docker");
    let s3 = S3Server::start();
    for (label, dir) in [
        (format!("(a) {files} files, {mb} MiB"), "tree"),
        (format!("(b) one file of {mb} MiB"), "file"),
    ] {
        if !runs(dir) {
            continue;
        }
        // The first read of files just written is slower on this storage, for whoever comes
        // first: the tree is read once, unmeasured.
        run(&format!(
            "docker exec {c} tar -C / -cf - data/{dir} | wc -c > /dev/null"
        ));
        let archive = work.path().join(format!("baseline-{dir}.tar.zst"));
        let archive = archive.to_str().expect("utf-8").to_string();
        println!("{label}:");
        let backends = [
            (
                "local directory",
                Backend::Local {
                    root: work.path().join(format!("store-{dir}")),
                },
            ),
            ("S3 (s3s-fs on loopback)", s3.backend()),
        ];
        let store = std::env::var("KILN_BENCH_STORE").ok();
        for (backend_name, backend) in backends {
            if store
                .as_deref()
                .is_some_and(|s| !backend_name.to_lowercase().starts_with(s))
            {
                continue;
            }
            let direct = Arc::new(Direct::open(backend, &format!("bench-{dir}")));
            let paths = [format!("/data/{dir}/**/*")];
            // The baseline saves just before Kiln's and again after it, and restores just before
            // Kiln's and again after it (each into the emptied container); Kiln's are set against
            // their means: this machine's speed drifts within a run (file creation slows down
            // after many deletions, and the disk and the other tenants come and go).
            let base_save_before = baseline_save(c, dir, &archive);
            let t = Instant::now();
            let saved = runtime
                .block_on(cache::save(&engine, c, direct.clone(), &paths, "", None))
                .expect("save");
            let cold = t.elapsed();
            let base_save_after = baseline_save(c, dir, &archive);
            let base_save = (base_save_before + base_save_after) / 2;
            let base_before = baseline_restore(c, dir, &archive);
            sh(c, &format!("rm -rf /data/{dir}"));
            let t = Instant::now();
            let dyn_store: Arc<dyn CacheStore> = direct.clone();
            let restored_entry = runtime
                .block_on(cache::restore(
                    &engine,
                    c,
                    dyn_store,
                    saved.entry.clone(),
                    true,
                ))
                .expect("restore");
            let restored = t.elapsed();
            // As a build does, the saves after it know what it restored.
            let save_since_restore = || {
                let t = Instant::now();
                let saved = runtime.block_on(cache::save(
                    &engine,
                    c,
                    direct.clone(),
                    &paths,
                    "",
                    Some(&restored_entry),
                ));
                (saved.expect("save after the restore"), t.elapsed())
            };
            // The files unchanged since the restore.
            let (again, unchanged) = save_since_restore();
            assert!(again.unchanged && again.entry.segments == saved.entry.segments);
            // One file added since the restore (sorted last): every file is read again, and only
            // the first segment (the directory's time) and the last are new.
            sh(c, &format!("echo added > /data/{dir}/zz-added"));
            let (reread, read_all) = save_since_restore();
            sh(c, &format!("rm /data/{dir}/zz-added"));
            let n = saved.entry.segments.len();
            assert_eq!(
                reread.entry.segments[1..n - 1],
                saved.entry.segments[1..n - 1],
                "the restored files cut the same segments"
            );
            assert!(
                reread.uploaded_segments <= 2,
                "{}",
                reread.uploaded_segments
            );
            let base_after = baseline_restore(c, dir, &archive);
            let base_restore = (base_before + base_after) / 2;
            println!(
                "  {backend_name}: save {} ({:.2}x the baseline's {} before and {} after), restore {} ({:.2}x the baseline's {} before and {} after), unchanged re-save {} ({:.3}x the first), re-save after adding a file, reading every file, {} ({:.2}x the first, {} of {} segments uploaded)",
                secs(cold),
                ratio(cold, base_save),
                secs(base_save_before),
                secs(base_save_after),
                secs(restored),
                ratio(restored, base_restore),
                secs(base_before),
                secs(base_after),
                secs(unchanged),
                ratio(unchanged, cold),
                secs(read_all),
                ratio(read_all, cold),
                reread.uploaded_segments,
                reread.entry.segments.len()
            );
        }
    }
}

/// `docker exec tar -c | zstd -3 -T0` to `archive` (a local file).
fn baseline_save(container: &str, dir: &str, archive: &str) -> Duration {
    let t = Instant::now();
    run(&format!(
        "docker exec {container} tar -C / -cf - data/{dir} | zstd -3 -T0 -q -f -o {archive}"
    ));
    t.elapsed()
}

/// `zstd -dc | docker exec -i tar -x` of the baseline's archive back where it was, after
/// removing it (unmeasured), as Kiln's restore finds it.
fn baseline_restore(container: &str, dir: &str, archive: &str) -> Duration {
    run(&format!("docker exec {container} rm -rf /data/{dir}"));
    let t = Instant::now();
    run(&format!(
        "zstd -dc {archive} | docker exec -i {container} tar -C / -xf -"
    ));
    t.elapsed()
}

fn run(script: &str) {
    let status = Command::new("bash")
        .args(["-c", &format!("set -eo pipefail; {script}")])
        .stderr(Stdio::inherit())
        .status()
        .expect("sh");
    assert!(status.success(), "{script}");
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
