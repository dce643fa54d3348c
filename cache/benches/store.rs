//! The blob store against `tar | zstd`, on the same data in the same run: one large file (1 GiB
//! by default; `KILN_BENCH_MB` changes it) saved and restored through the local-directory backend
//! and through a real S3-compatible server (`s3s-fs`, see `deploy/test-deps.sh`), plus a second
//! save of the unchanged file. Prints each time and its ratio to the baseline.
//!
//!   cargo bench -p kiln-cache --bench store

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_cache::{Backend, BlobStore, StoreConfig};
use kiln_tests::s3::S3Server;

fn main() {
    let mb = kiln_tests::bench_setting("KILN_BENCH_MB", 1024) as usize;
    let work = kiln_tests::bench_work_dir();
    let input = work.path().join("input");
    write_input(&input, mb << 20);
    println!("one file of {mb} MiB (half random, half repetitive text)");

    let (save, restore) = baseline(&input, work.path());
    println!(
        "baseline tar | zstd -3 -T0: save {} restore {}",
        secs(save),
        secs(restore)
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let local_root = work.path().join("store");
    let local = BlobStore::open(&config(Backend::Local { root: local_root })).expect("local store");
    runtime.block_on(measure(
        "local directory",
        &local,
        &input,
        work.path(),
        save,
        restore,
    ));

    let s3 = S3Server::start();
    let remote = BlobStore::open(&config(s3.backend())).expect("s3 store");
    runtime.block_on(measure(
        "S3 (s3s-fs on loopback)",
        &remote,
        &input,
        work.path(),
        save,
        restore,
    ));
}

fn config(backend: Backend) -> StoreConfig {
    StoreConfig {
        backend,
        prefix: "bench".into(),
        key: None,
        level: 3,
    }
}

async fn measure(
    name: &str,
    store: &BlobStore,
    input: &Path,
    work: &Path,
    base_save: Duration,
    base_restore: Duration,
) {
    let t = Instant::now();
    let put = store.put_file(input, None).await.expect("save");
    let cold = t.elapsed();
    let t = Instant::now();
    let again = store.put_file(input, None).await.expect("save again");
    let unchanged = t.elapsed();
    assert!(put.uploaded && !again.uploaded);
    let out = work.join("restored");
    let t = Instant::now();
    store.get_file(&put.digest, &out).await.expect("restore");
    let restored = t.elapsed();
    std::fs::remove_file(&out).expect("rm");
    println!(
        "{name}: save {} ({:.2}x baseline), unchanged re-save {} ({:.3}x the first), restore {} ({:.2}x baseline)",
        secs(cold),
        ratio(cold, base_save),
        secs(unchanged),
        ratio(unchanged, cold),
        secs(restored),
        ratio(restored, base_restore),
    );
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
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

/// `tar -c | zstd -3` to a local file and back, as a shell pipeline.
fn baseline(input: &Path, work: &Path) -> (Duration, Duration) {
    let dir = input.parent().expect("dir").display().to_string();
    let archive = work.join("baseline.tar.zst").display().to_string();
    let restore = work.join("baseline-out");
    std::fs::create_dir_all(&restore).expect("mkdir");
    let run = |script: String| {
        let t = Instant::now();
        let status = Command::new("sh")
            .args(["-c", &script])
            .stderr(Stdio::inherit())
            .status()
            .expect("sh");
        assert!(status.success(), "{script}");
        t.elapsed()
    };
    let save = run(format!(
        "tar -C {dir} -cf - input | zstd -3 -T0 -q -f -o {archive}"
    ));
    let restored = run(format!(
        "zstd -dc -q {archive} | tar -C {} -xf -",
        restore.display()
    ));
    std::fs::remove_dir_all(&restore).expect("rm");
    (save, restored)
}
