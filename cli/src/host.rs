//! Facts about this process and host: the owner label of the Docker objects it creates, whether
//! the owner of a leftover object still runs, and per-project build numbers for `kiln run`.

use std::path::PathBuf;

use kiln_worker::docker::convert::process_owner;

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which
/// tells a live process from a later one that reused its pid.
fn start_ticks(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// The owner label for objects this process creates.
pub fn owner() -> String {
    let ticks = start_ticks("self").unwrap_or_default();
    process_owner(&hostname(), std::process::id(), &ticks)
}

/// Whether the process that created an object is still running. An owner whose start time was
/// unknown is taken as alive: removing a running build would be far worse than leaving one.
pub fn is_alive(pid: u32, ticks: &str) -> bool {
    ticks.is_empty() || start_ticks(&pid.to_string()).is_some_and(|t| t == ticks)
}

/// The next build number of a project for `kiln run`, kept in the user's state directory.
/// Best effort: without a writable state directory every build is number 1.
pub fn next_build_number(project: &str) -> u64 {
    let Some(dir) = state_dir() else { return 1 };
    let path = dir.join("build-numbers").join(project);
    let last: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let next = last + 1;
    let written = std::fs::create_dir_all(dir.join("build-numbers")).and_then(|()| {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, next.to_string())?;
        std::fs::rename(&tmp, &path)
    });
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot record the build number");
    }
    next
}

fn state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("kiln"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/kiln"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_different_start_is_not() {
        let owner = owner();
        let (_, pid, ticks) =
            kiln_worker::docker::convert::parse_owner(&owner).expect("owner parses");
        assert!(is_alive(pid, ticks));
        assert!(!is_alive(pid, "0"));
        assert!(is_alive(pid, ""), "unknown start time: never reaped");
    }
}
