//! The client commands of the `kiln` binary (`start`, `logs`, `get`, `list`, `stop`, `artifacts`,
//! `project`, `network`, `cache`): each talks to a Kiln server's `BuildService` over gRPC and ends with an exit status.
//!
//! Exit status: 0 success; 1 a build that did not succeed, or a failure talking to the server;
//! 2 invalid input, found locally or refused by the server with INVALID_ARGUMENT (nothing ran).

/// `println!` for command output that a closed reader (`kiln list | head`) must not turn into a
/// panic: what is left to print is dropped, the command still ends with its own status. Defined
/// before the modules, so they all see it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod artifacts;
mod builds;
mod cache;
mod connect;
mod json;
mod logs;
mod network;
mod project;
mod project_file;
mod start;

use std::future::Future;
use std::process::ExitCode;

pub use artifacts::{artifacts, download, ArtifactsArgs};
pub use builds::{get, list, stop, GetArgs, ListArgs, StopArgs};
pub use cache::{cache, CacheArgs};
pub use connect::Server;
pub use logs::{logs, LogsArgs};
pub use network::{network, NetworkArgs};
pub use project::{project, ProjectArgs};
pub use start::{
    finish, follow, initiator, plaintext, relative_buildspec, start, submit, StartArgs,
};

/// Why a client command stopped: the message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Invalid input (exit 2): nothing was started or changed.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// Anything else that went wrong (exit 1).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Tells the user (`kiln <name>: <message>`) and ends with the failure's status.
    pub fn exit(self, name: &str) -> ExitCode {
        eprintln!("kiln {name}: {}", self.message);
        ExitCode::from(self.code)
    }
}

/// Runs one client command to completion and turns a failure into a message on stderr.
pub fn execute(name: &str, command: impl Future<Output = Result<ExitCode, Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln {name}: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime
        .block_on(command)
        .unwrap_or_else(|failure| failure.exit(name))
}
