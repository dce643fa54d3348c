//! The gRPC services: [`build::BuildApi`] for clients, [`worker::WorkerApi`] for workers.

pub mod build;
mod start;
pub mod worker;
