//! `cargo bench -p kiln --bench engine`: `kiln run` against plain `docker run` on the same image,
//! measured in the same run, reported as ratios.
//!
//! 1. Start-up: median wall time of `kiln run` on a one-command buildspec against
//!    `docker run --rm IMAGE sh -c 'echo hi'` (target: ratio <= 1.5). A third figure, `docker run`
//!    on a freshly created network that is removed afterwards, shows what the per-build network
//!    (which `kiln run` always makes) costs by itself.
//! 2. Output: a build printing 200 MB through secret masking into a file, against the same command
//!    in `docker run` writing to a file (target: throughput ratio >= 0.8).
//!
//! `KILN_BENCH_RUNS` sets the start-up sample count (default 15), `KILN_BENCH_MB` the output size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "kiln/build-image:bookworm";

fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env(
        "XDG_STATE_HOME",
        std::env::temp_dir().join("kiln-bench-state"),
    );
    cmd
}

/// Runs a command to completion with its stdout in `stdout_file` (or discarded); returns its time.
fn timed(mut cmd: Command, stdout_file: Option<&Path>) -> Duration {
    let stdout = match stdout_file {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("output file")),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let status = cmd
        .stdout(stdout)
        .stderr(Stdio::null())
        .status()
        .expect("command starts");
    let elapsed = start.elapsed();
    assert!(status.success(), "benchmark command failed: {cmd:?}");
    elapsed
}

fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let megabytes: u64 = std::env::var("KILN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ready = docker(&["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .status()
        .expect("docker CLI");
    assert!(
        ready.success(),
        "image {IMAGE} missing: run deploy/build-image.sh first"
    );

    let work = tempfile::tempdir().expect("temp dir");
    let one = work.path().join("one");
    std::fs::create_dir(&one).expect("mkdir");
    std::fs::write(
        one.join("buildspec.yml"),
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n",
    )
    .expect("buildspec");

    // Warm up both paths once (page cache, image layers).
    timed(kiln_run(&one), None);
    timed(docker(&["run", "--rm", IMAGE, "sh", "-c", "echo hi"]), None);

    let (mut k, mut d, mut dn) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        k.push(timed(kiln_run(&one), None));
        d.push(timed(
            docker(&["run", "--rm", IMAGE, "sh", "-c", "echo hi"]),
            None,
        ));
        let net = format!("kiln-bench-{}-{i}", std::process::id());
        let start = Instant::now();
        timed(docker(&["network", "create", &net]), None);
        timed(
            docker(&[
                "run",
                "--rm",
                "--network",
                &net,
                IMAGE,
                "sh",
                "-c",
                "echo hi",
            ]),
            None,
        );
        timed(docker(&["network", "rm", &net]), None);
        dn.push(start.elapsed());
    }
    let (k, d, dn) = (median(k), median(d), median(dn));
    println!("start-up ({runs} runs, median wall time)");
    println!(
        "  kiln run, one-command buildspec            {:8.1} ms",
        ms(k)
    );
    println!(
        "  docker run --rm IMAGE sh -c 'echo hi'      {:8.1} ms",
        ms(d)
    );
    println!(
        "  docker network create + run + network rm   {:8.1} ms",
        ms(dn)
    );
    println!(
        "  ratio kiln / docker run                    {:8.2}   (target <= 1.5)",
        ms(k) / ms(d)
    );
    println!(
        "  ratio kiln / docker run on its own network {:8.2}",
        ms(k) / ms(dn)
    );

    let bytes = megabytes * 1_000_000;
    let producer = format!("yes 'kiln benchmark output line: the quick brown fox jumps over the lazy dog' | head -c {bytes}");
    let loud = work.path().join("loud");
    std::fs::create_dir(&loud).expect("mkdir");
    std::fs::write(
        loud.join("buildspec.yml"),
        format!(
            "version: 0.2\nenv:\n  parameter-store:\n    TOKEN: /bench/token\nphases:\n  build:\n    commands:\n      - |\n        {producer}\n"
        ),
    )
    .expect("buildspec");
    let out = work.path().join("out.log");
    let (mut kt, mut dt) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut cmd = kiln_run(&loud);
        cmd.args(["--secret", "/bench/token=s3cr3t-never-printed"]);
        kt.push(timed(cmd, Some(&out)));
        let size = std::fs::metadata(&out).expect("output").len();
        assert!(
            size >= bytes,
            "kiln wrote {size} bytes, expected at least {bytes}"
        );
        dt.push(timed(
            docker(&["run", "--rm", IMAGE, "sh", "-c", &producer]),
            Some(&out),
        ));
    }
    let (kt, dt) = (median(kt), median(dt));
    let rate = |t: Duration| bytes as f64 / 1e6 / t.as_secs_f64();
    println!("output throughput ({megabytes} MB, masking on, to a file; median of 3)");
    println!(
        "  kiln run                                   {:8.1} MB/s ({:.2} s)",
        rate(kt),
        kt.as_secs_f64()
    );
    println!(
        "  docker run                                 {:8.1} MB/s ({:.2} s)",
        rate(dt),
        dt.as_secs_f64()
    );
    println!(
        "  ratio kiln / docker run                    {:8.2}   (target >= 0.8)",
        rate(kt) / rate(dt)
    );
}

fn kiln_run(dir: &Path) -> Command {
    let mut cmd = kiln();
    cmd.arg("run").arg(dir);
    cmd
}
