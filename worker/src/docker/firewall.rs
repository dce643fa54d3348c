//! Defence in depth for build isolation. Docker keeps bridge networks apart with its own
//! iptables chains, but it rewrites them as networks come and go, and while it does (seen on
//! Docker 20.10 with many builds starting and ending at once) a build could open a connection to
//! another build's container. Every build network's bridge is named `kiln...`
//! ([`super::convert::BRIDGE_PREFIX`]), so one rule in `DOCKER-USER`, the chain Docker leaves to
//! the operator and never rewrites, drops all traffic from one build bridge to another:
//!
//! ```text
//! iptables -I DOCKER-USER -i kiln+ -o kiln+ -j DROP
//! ```
//!
//! It is added once per process, when the Docker daemon is on this host; a host where it cannot
//! be added (no iptables, no privileges, a remote daemon) keeps Docker's own isolation and a
//! warning says so.

use std::process::Command;
use std::sync::Once;

use super::convert::BRIDGE_PREFIX;

fn rule() -> [String; 7] {
    let any = format!("{BRIDGE_PREFIX}+");
    ["DOCKER-USER", "-i", &any, "-o", &any, "-j", "DROP"].map(String::from)
}

/// Adds the rule unless it is there (once per process; see the module docs).
pub fn isolate_build_bridges() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match ensure_rule() {
        Ok(true) => tracing::info!("added the firewall rule that keeps build networks apart"),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            error = e,
            "cannot add the firewall rule that keeps build networks apart (iptables -I \
             DOCKER-USER -i kiln+ -o kiln+ -j DROP); builds rely on Docker's isolation alone"
        ),
    });
}

/// Whether the rule had to be added.
fn ensure_rule() -> Result<bool, String> {
    let iptables = |op: &str| {
        Command::new("iptables")
            .arg(op)
            .args(rule())
            .output()
            .map_err(|e| format!("running iptables: {e}"))
    };
    if iptables("-C")?.status.success() {
        return Ok(false);
    }
    let added = iptables("-I")?;
    match added.status.success() {
        true => Ok(true),
        false => Err(String::from_utf8_lossy(&added.stderr).trim().to_string()),
    }
}
