//! What the benchmarks share: Kiln's timings taken in turn with a baseline's, and how they are
//! printed.

use std::fmt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many rounds a benchmark runs (`KILN_BENCH_ROUNDS`, else `default`; at least one).
pub fn rounds(default: u64) -> usize {
    usize::try_from(crate::bench_setting("KILN_BENCH_ROUNDS", default).max(1)).unwrap_or(1)
}

/// Kiln's timings and the baseline's, taken in turn (baseline, Kiln, baseline, ..., baseline):
/// each of Kiln's is set against the mean of the baseline's just before and just after it, as
/// this machine's speed drifts within a run; the median over the rounds is the figure.
pub struct Bracketed {
    kiln: Vec<Duration>,
    base: Vec<Duration>,
    /// The CPU time of Kiln's runs (this process), and of the baseline's (the commands it runs;
    /// not the work of daemons both use, such as Docker's).
    kiln_cpu: Vec<Duration>,
    base_cpu: Vec<Duration>,
}

/// `rounds` of Kiln's `kiln(round)`, each between two of the baseline's `base()`; returns what
/// Kiln's gave, in order, and the timings.
pub fn bracketed<T>(
    rounds: usize,
    mut base: impl FnMut() -> Duration,
    mut kiln: impl FnMut(usize) -> (T, Duration),
) -> (Vec<T>, Bracketed) {
    let mut timings = Bracketed {
        kiln: Vec::new(),
        base: Vec::new(),
        kiln_cpu: Vec::new(),
        base_cpu: Vec::new(),
    };
    let mut base = || {
        let (_, before) = cpu();
        timings.base.push(base());
        timings.base_cpu.push(cpu().1.saturating_sub(before));
    };
    base();
    let mut gave = Vec::new();
    for round in 0..rounds {
        let (before, _) = cpu();
        let (value, took) = kiln(round);
        timings.kiln_cpu.push(cpu().0.saturating_sub(before));
        gave.push(value);
        timings.kiln.push(took);
        base();
    }
    (gave, timings)
}

impl Bracketed {
    /// Each of Kiln's timings against the mean of the baselines either side of it, in order.
    fn ratios(&self) -> Vec<f64> {
        self.kiln
            .iter()
            .zip(self.base.windows(2))
            .map(|(kiln, base)| ratio(*kiln, (base[0] + base[1]) / 2))
            .collect()
    }

    /// The median of Kiln's timings.
    pub fn kiln_median(&self) -> Duration {
        Duration::from_secs_f64(median(
            self.kiln.iter().map(Duration::as_secs_f64).collect(),
        ))
    }
}

impl fmt::Display for Bracketed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ratios = self.ratios();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        let list = |times: &[Duration]| times.iter().map(|t| secs(*t)).collect::<Vec<_>>();
        write!(
            f,
            "{:.2}x the baseline (median; each round {}), Kiln {}, baseline {}; CPU: Kiln {}, the baseline's commands {}",
            median(ratios),
            each.join(" "),
            list(&self.kiln).join(" "),
            list(&self.base).join(" "),
            list(&self.kiln_cpu).join(" "),
            list(&self.base_cpu).join(" ")
        )
    }
}

/// The CPU time (user and system) of this process, and of its children waited for.
fn cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command's name, which is in parentheses: utime is the 14th field.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().expect("a tick count"))
        .collect();
    // Linux reports these in ticks of 1/100 s (USER_HZ).
    let ticks = |n: u64| Duration::from_millis(n * 10);
    (ticks(fields[0] + fields[1]), ticks(fields[2] + fields[3]))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// Runs `script` with bash, which must succeed (with `pipefail`: every command of a pipeline);
/// returns how long it took.
pub fn shell(script: &str) -> Duration {
    let t = Instant::now();
    let status = Command::new("bash")
        .args(["-c", &format!("set -eo pipefail; {script}")])
        .stderr(Stdio::inherit())
        .status()
        .expect("bash");
    assert!(status.success(), "{script}");
    t.elapsed()
}

/// A duration as seconds, to the hundredth.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// `a` over `b`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// Writes every dirty page to disk (`sync`) before a timed step, so that the step does not pay
/// for the writeback of the steps before it (the kernel starts it once enough is dirty, and it
/// slows whoever writes next).
pub fn settle() {
    let status = Command::new("sync").status().expect("sync");
    assert!(status.success(), "sync");
}
