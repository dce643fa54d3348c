//! Defence in depth for build isolation. Docker keeps bridge networks apart with its own
//! iptables chains, but it rewrites them as networks come and go, and while it does (seen on
//! Docker 20.10 with many builds starting and ending at once) a build could open a connection to
//! another build's container, or to a container on another network it is not attached to. Every
//! build network's bridge is named `kiln...` ([`super::convert::BRIDGE_PREFIX`]), so rules in
//! `DOCKER-USER`, the chain Docker leaves to the operator and never rewrites, drop all traffic
//! between a build bridge and another build bridge, a user-defined network's bridge (`br-...`) or
//! the default bridge:
//!
//! ```text
//! iptables -I DOCKER-USER -i kiln+ -o kiln+ -j DROP
//! iptables -I DOCKER-USER -i kiln+ -o br-+ -j DROP      (and -i br-+ -o kiln+)
//! iptables -I DOCKER-USER -i kiln+ -o docker0 -j DROP   (and -i docker0 -o kiln+)
//! ```
//!
//! A build attached to an operator network talks to it over that network's bridge, which these
//! rules leave alone, and egress to other interfaces is untouched. They are added once per
//! process, when the Docker daemon is on this host; a host where they cannot be added (no
//! iptables, no privileges, a remote daemon) keeps Docker's own isolation and a warning says so.

use std::process::Command;
use std::sync::Once;

use super::convert::BRIDGE_PREFIX;

/// The rules, as `iptables` arguments after the operation.
fn rules() -> Vec<[String; 7]> {
    let build = format!("{BRIDGE_PREFIX}+");
    let pairs = [
        (build.as_str(), build.as_str()),
        (build.as_str(), "br-+"),
        ("br-+", build.as_str()),
        (build.as_str(), "docker0"),
        ("docker0", build.as_str()),
    ];
    pairs
        .iter()
        .map(|(from, to)| ["DOCKER-USER", "-i", from, "-o", to, "-j", "DROP"].map(String::from))
        .collect()
}

/// Adds the rules that are not there (once per process; see the module docs).
pub fn isolate_build_bridges() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match ensure_rules() {
        Ok(0) => {}
        Ok(added) => tracing::info!(
            added,
            "added the firewall rules that keep build networks apart"
        ),
        Err(e) => tracing::warn!(
            error = e,
            "cannot add the firewall rules that keep build networks apart (iptables -I \
             DOCKER-USER -i kiln+ -o kiln+ -j DROP, and the same between kiln+ and br-+ or \
             docker0); builds rely on Docker's isolation alone"
        ),
    });
}

/// How many rules had to be added.
fn ensure_rules() -> Result<usize, String> {
    let iptables = |op: &str, rule: &[String]| {
        Command::new("iptables")
            .arg(op)
            .args(rule)
            .output()
            .map_err(|e| format!("running iptables: {e}"))
    };
    let mut added = 0;
    for rule in rules() {
        if iptables("-C", &rule)?.status.success() {
            continue;
        }
        let out = iptables("-I", &rule)?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        added += 1;
    }
    Ok(added)
}
