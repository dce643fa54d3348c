//! Facts about this process and host: the owner label of the Docker objects it creates, and
//! whether the owner of a leftover object still runs (so `Engine::reap_orphans` can tell).

use crate::docker::convert::process_owner;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_different_start_is_not() {
        let owner = owner();
        let (_, pid, ticks) = crate::docker::convert::parse_owner(&owner).expect("owner parses");
        assert!(is_alive(pid, ticks));
        assert!(!is_alive(pid, "0"));
        assert!(is_alive(pid, ""), "unknown start time: never reaped");
    }
}
