//! Per-project build numbers for `kiln run`; the host facts (owner label, liveness of the owner
//! of a leftover object) live in `kiln_worker::host`, shared with the worker agent.

use std::path::PathBuf;

pub use kiln_worker::host::{hostname, is_alive, owner};

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

pub fn state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("kiln"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/kiln"))
}
