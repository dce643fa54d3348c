//! Kiln's coordinator: the gRPC services for clients and workers, the durable queue and
//! scheduler, leases, build records, log fan-out, projects and auth.
//!
//! `server::Coordinator` is the entry point; `core` holds the shared state, `scheduler` the
//! dispatcher and sweeper loops, `service` the gRPC services, `store` the durable state (embedded
//! file or Redis), `blobs` uploaded sources, artifacts and cache segments, `caches` the build cache
//! index, `archive` the checks on uploads,
//! `retention` what caches and artifacts are kept, `auth` the tokens, `config` the configuration file.

pub mod archive;
pub mod auth;
pub mod blobs;
pub mod caches;
pub mod config;
pub mod core;
pub mod retention;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;

pub use config::CoordinatorConfig;
pub use server::Coordinator;
