//! Build caches against `tar | zstd`, on the same data in the same container in the same run:
//! (a) a `node_modules`-like tree of 20 KiB files and (b) one large file, 1 GiB each by default
//! (`KILN_BENCH_MB` changes it), half random bytes and half log-like text. Each is saved with the
//! worker's cache path (`kiln_worker::cache`: out of the container, cut into segments, uploaded),
//! restored into the emptied container, saved a second time unchanged, and a third time after one
//! file was added (every file read, only the segments the store lacks uploaded), through the
//! local-directory blob store and through a real S3-compatible server (`s3s-fs`). The baseline is
//! `docker exec tar -c | zstd -3 -T0` to a local file and `zstd -dc | docker exec -i tar -x` back
//! into the emptied container. Kiln's cold saves and restores take turns with the baseline's, which
//! runs first and last, and each of Kiln's is set against the mean of the baseline's either side
//! of it; the median over the rounds (`KILN_BENCH_ROUNDS`: by default three for the file, one for
//! the tree) is the figure. Needs Docker and the build image (`deploy/build-image.sh`).
//!
//!   cargo bench -p kiln-worker --bench cache
//!
//! `KILN_BENCH_CASE=tree` (or `file`) runs one of the two cases, `KILN_BENCH_STORE=local` (or
//! `s3`) one of the two stores.
//!
//! The store is used directly, as the coordinator uses it; the worker-to-coordinator gRPC hop of a
//! farm is not in these figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/direct.rs"]
mod direct;

use direct::Direct;
use kiln_cache::Backend;
use kiln_tests::bench::{self, bracketed, ratio, secs, shell};
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
        shell(&format!(
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
            let paths = [format!("/data/{dir}/**/*")];
            let rounds = rounds(dir);
            // Kiln's cold saves and restores take turns with the baseline's, which comes first
            // and last (see `kiln_tests::bench::Bracketed`): this machine's speed drifts within a run (file creation
            // slows down after many deletions, and the disk and the other tenants come and go).
            // Each cold save goes to a store of its own, empty.
            let (saves, save_times) = bracketed(
                rounds,
                || baseline_save(c, dir, &archive),
                |round| {
                    let direct = Arc::new(Direct::open(
                        backend.clone(),
                        &format!("bench-{dir}-{round}"),
                    ));
                    let t = Instant::now();
                    let saved = runtime
                        .block_on(cache::save(&engine, c, direct.clone(), &paths, "", None))
                        .expect("save");
                    ((direct, saved), t.elapsed())
                },
            );
            let (direct, saved) = saves.first().expect("a round");
            assert!(
                saves
                    .iter()
                    .all(|(_, other)| other.entry.segments == saved.entry.segments),
                "every cold save cuts the same segments"
            );
            // The saves after a restore, as a build's: they know what it restored. The files
            // unchanged since, then one file added (sorted last: every file is read again, and
            // only the first segment, the directory's time, and the last are new).
            let saves_since = |restored: &cache::Restored| {
                let save_since = || {
                    let t = Instant::now();
                    let saved = runtime.block_on(cache::save(
                        &engine,
                        c,
                        direct.clone(),
                        &paths,
                        "",
                        Some(restored),
                    ));
                    (saved.expect("save after the restore"), t.elapsed())
                };
                let unchanged = save_since();
                sh(c, &format!("echo added > /data/{dir}/zz-added"));
                let added = save_since();
                sh(c, &format!("rm /data/{dir}/zz-added"));
                (unchanged, added)
            };
            // Restores into the emptied container, as the baseline's; the saves above follow
            // Kiln's last.
            let (after, restore_times) = bracketed(
                rounds,
                || baseline_restore(c, dir, &archive),
                |round| {
                    sh(c, &format!("rm -rf /data/{dir}"));
                    let dyn_store: Arc<dyn CacheStore> = direct.clone();
                    let t = Instant::now();
                    let restored = runtime
                        .block_on(cache::restore(
                            &engine,
                            c,
                            dyn_store,
                            saved.entry.clone(),
                            true,
                        ))
                        .expect("restore");
                    let took = t.elapsed();
                    ((round + 1 == rounds).then(|| saves_since(&restored)), took)
                },
            );
            let ((again, unchanged), (reread, read_all)) =
                after.into_iter().flatten().next().expect("the last round");
            assert!(again.unchanged && again.entry.segments == saved.entry.segments);
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
            let cold = save_times.kiln_median();
            println!(
                "  {backend_name}: save {save_times}; restore {restore_times}; unchanged re-save {} ({:.3}x the median cold save), re-save after adding a file, reading every file, {} ({:.2}x, {} of {} segments uploaded)",
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

/// How many times Kiln's cold save and restore run (`KILN_BENCH_ROUNDS`; by default three for the
/// file, one for the tree, whose restore takes minutes).
fn rounds(dir: &str) -> usize {
    bench::rounds(if dir == "file" { 3 } else { 1 })
}

/// `docker exec tar -c | zstd -3 -T0` to `archive` (a local file).
fn baseline_save(container: &str, dir: &str, archive: &str) -> Duration {
    shell(&format!(
        "docker exec {container} tar -C / -cf - data/{dir} | zstd -3 -T0 -q -f -o {archive}"
    ))
}

/// `zstd -dc | docker exec -i tar -x` of the baseline's archive back where it was, after
/// removing it (unmeasured), as Kiln's restore finds it.
fn baseline_restore(container: &str, dir: &str, archive: &str) -> Duration {
    shell(&format!("docker exec {container} rm -rf /data/{dir}"));
    shell(&format!(
        "zstd -dc {archive} | docker exec -i {container} tar -C / -xf -"
    ))
}
