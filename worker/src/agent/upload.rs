//! A build's artifacts going up: the uncompressed tar the runner wrote (`primary/...`,
//! `secondary/<id>/...`, or `primary.zip` and `secondary/<id>.zip`), streamed with
//! `UploadArtifacts` after a `begin` naming the lease and the tar's digest (summed as it was
//! written).
//!
//! The coordinator answers with the stored size; a size other than the tar's means the stream was
//! cut short (a read error ends it early), and the upload is tried again.

use std::io;
use std::path::Path;

use futures_util::StreamExt;
use kiln_proto::v1::{
    upload_artifacts_request::Part, LeaseRef, UploadArtifactsRequest, UploadArtifactsResponse,
};
use thiserror::Error;
use tokio_util::io::ReaderStream;

use super::Client;
use crate::artifacts::tar_digest_path;

/// Bytes per `data` message.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum UploadError {
    #[error("packing the artifacts: {0}")]
    Io(#[from] io::Error),
    /// The coordinator refused the epoch: the build is someone else's now.
    #[error("the lease is gone: {0}")]
    LeaseGone(Box<tonic::Status>),
    #[error("{0}")]
    Rpc(Box<tonic::Status>),
    #[error("the coordinator stored {stored} bytes of a {sent}-byte artifact tar")]
    Truncated { sent: u64, stored: u64 },
    #[error("the build was abandoned")]
    Abandoned,
}

/// Uploads the tar at `path` (`size` bytes) for `lease`.
pub async fn upload_artifacts(
    client: &mut Client,
    lease: LeaseRef,
    path: &Path,
    size: u64,
) -> Result<UploadArtifactsResponse, UploadError> {
    let file = tokio::fs::File::open(path).await?;
    // The sum taken as the tar was written lets the coordinator store it as it comes.
    let digest = tokio::fs::read_to_string(tar_digest_path(path)).await?;
    let begin = UploadArtifactsRequest {
        part: Some(Part::Begin(lease)),
        digest: digest.trim().to_string(),
    };
    let data = ReaderStream::with_capacity(file, CHUNK).scan((), |_, chunk| {
        std::future::ready(match chunk {
            Ok(data) => Some(UploadArtifactsRequest {
                part: Some(Part::Data(data.into())),
                digest: String::new(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "reading the artifact tar failed");
                None
            }
        })
    });
    let stream = futures_util::stream::iter([begin]).chain(data);
    let response = match client.upload_artifacts(stream).await {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return Err(UploadError::LeaseGone(Box::new(status)))
        }
        Err(status) => return Err(UploadError::Rpc(Box::new(status))),
    };
    if response.size != size {
        return Err(UploadError::Truncated {
            sent: size,
            stored: response.size,
        });
    }
    Ok(response)
}
