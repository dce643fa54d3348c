//! The gRPC services: [`build::BuildApi`] for clients, [`worker::WorkerApi`] for workers.

pub mod build;
mod start;
pub mod worker;

/// A server stream of a service.
type BoxStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, tonic::Status>> + Send>>;
