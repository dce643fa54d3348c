//! Host facts: the user's state directory here; the host name and the owner label of Docker
//! objects in `kiln_worker::host`, shared with the worker agent.

use std::path::PathBuf;

pub use kiln_worker::host::{hostname, owner};

/// `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("kiln"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/kiln"))
}
