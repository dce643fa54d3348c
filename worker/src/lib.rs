//! Kiln's build engine: runs one buildspec in a Docker container the way AWS CodeBuild does.
//! `docker` is the container lifecycle, `phases` the phase runner, `shell` how one command item
//! runs, `mask` secret masking, `artifacts` artifact collection.

pub mod artifacts;
pub mod docker;
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
