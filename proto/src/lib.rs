//! Kiln's gRPC API, generated from `proto/kiln/v1/*.proto`: `BuildService` for clients and
//! `WorkerService` for workers (its lifecycle is documented in `worker.proto`).

/// `kiln.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kiln.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");

pub mod policy;
