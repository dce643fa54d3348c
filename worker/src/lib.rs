//! Kiln's build engine: runs one buildspec in a Docker container the way AWS CodeBuild does.
//! `agent` takes builds from a coordinator over the worker protocol and reports on them; `job` is
//! what to build; `phases` the phase runner; `shell` how one command item runs and
//! carries its state; `docker` the container lifecycle; `source` the checkout going in;
//! `artifacts` what comes out; `cache` the build caches; `secrets` the local secret store; `mask` and `log` the masked
//! build log; `record` the CodeBuild-shaped build record; `host` the owner label of this
//! process's Docker objects.

pub mod agent;
pub mod artifacts;
pub mod cache;
pub mod docker;
pub mod host;
pub mod ignore;
pub mod job;
pub mod log;
pub mod mask;
pub mod phases;
pub mod record;
pub mod secrets;
pub mod shell;
pub mod source;

pub use job::BuildJob;
pub use phases::run_build;
