//! The blob store against `tar | zstd`, on the same data in the same run: one large file (1 GiB
//! by default; `KILN_BENCH_MB` changes it) saved and restored through the local-directory backend
//! and through a real S3-compatible server (`s3s-fs`, see `deploy/test-deps.sh`), plus a second
//! save of the unchanged file. Kiln's saves and restores take turns with the baseline's (see
//! `kiln_tests::bench::Bracketed`); prints each time, its ratio to the baseline's either side of
//! it, and the median ratio.
//!
//!   cargo bench -p kiln-cache --bench store

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_cache::{Backend, BlobStore, StoreConfig};
use kiln_tests::bench::{self, bracketed, ratio, secs, shell};
use kiln_tests::s3::S3Server;

fn main() {
    let mb = kiln_tests::bench_setting("KILN_BENCH_MB", 1024) as usize;
    let work = kiln_tests::bench_work_dir();
    let input = work.path().join("input");
    write_input(&input, mb << 20);
    println!("one file of {mb} MiB (half random, half repetitive text)");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let local = Backend::Local {
        root: work.path().join("store"),
    };
    measure(&runtime, "local directory", &local, &input, work.path());
    let s3 = S3Server::start();
    measure(
        &runtime,
        "S3 (s3s-fs on loopback)",
        &s3.backend(),
        &input,
        work.path(),
    );
}

/// Kiln's saves (each to an empty store of its own) and restores, three rounds of each by default
/// (`KILN_BENCH_ROUNDS`), taking turns with the baseline's.
fn measure(
    runtime: &tokio::runtime::Runtime,
    name: &str,
    backend: &Backend,
    input: &Path,
    work: &Path,
) {
    let rounds = bench::rounds(3);
    let (stores, saves) = bracketed(
        rounds,
        || baseline_save(input, work),
        |round| {
            let store = BlobStore::open(&StoreConfig {
                backend: backend.clone(),
                prefix: format!("bench-{round}"),
                key: None,
                level: 3,
            })
            .expect("the store");
            let t = Instant::now();
            let put = runtime.block_on(store.put_file(input, None)).expect("save");
            assert!(put.uploaded);
            ((store, put.digest), t.elapsed())
        },
    );
    let (store, digest) = stores.first().expect("a round");
    let t = Instant::now();
    let again = runtime
        .block_on(store.put_file(input, None))
        .expect("save again");
    let unchanged = t.elapsed();
    assert!(!again.uploaded);
    let out = work.join("restored");
    let (_, restores) = bracketed(
        rounds,
        || baseline_restore(work),
        |_| {
            let t = Instant::now();
            runtime
                .block_on(store.get_file(digest, &out))
                .expect("restore");
            let took = t.elapsed();
            std::fs::remove_file(&out).expect("rm");
            ((), took)
        },
    );
    println!(
        "{name}: save {saves}; unchanged re-save {} ({:.3}x the median save); restore {restores}",
        secs(unchanged),
        ratio(unchanged, saves.kiln_median()),
    );
}

/// Half pseudo-random bytes (incompressible), half log-like text (compressible), in 1 MiB runs.
fn write_input(path: &Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("input"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let text: Vec<u8> = (0..)
        .map(|i| format!("line {i}: compiling module_{} ok\n", i % 977))
        .flat_map(String::into_bytes)
        .take(1 << 20)
        .collect();
    let mut written = 0;
    let mut block = vec![0u8; 1 << 20];
    while written < size {
        let n = block.len().min(size - written);
        if (written >> 20) % 2 == 0 {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 32) as u8;
            }
            f.write_all(&block[..n]).expect("write");
        } else {
            f.write_all(&text[..n]).expect("write");
        }
        written += n;
    }
    f.flush().expect("flush");
}

/// `tar -c | zstd -3 -T0` of the input to a local file.
fn baseline_save(input: &Path, work: &Path) -> Duration {
    let dir = input.parent().expect("dir").display();
    let archive = work.join("baseline.tar.zst");
    shell(&format!(
        "tar -C {dir} -cf - input | zstd -3 -T0 -q -f -o {}",
        archive.display()
    ))
}

/// `zstd -dc | tar -x` of the baseline's archive into an empty directory (removed after).
fn baseline_restore(work: &Path) -> Duration {
    let archive = work.join("baseline.tar.zst");
    let restore = work.join("baseline-out");
    std::fs::create_dir_all(&restore).expect("mkdir");
    let took = shell(&format!(
        "zstd -dc -q {} | tar -C {} -xf -",
        archive.display(),
        restore.display()
    ));
    std::fs::remove_dir_all(&restore).expect("rm");
    took
}
