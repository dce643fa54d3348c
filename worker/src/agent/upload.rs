//! A build's artifacts going up: the runner's output directory (`primary/...`,
//! `secondary/<id>/...`, or `primary.zip` and `secondary/<id>.zip`) as an uncompressed tar,
//! streamed with `UploadArtifacts` after a `begin` naming the lease.
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

/// Writes `dir`'s contents as an uncompressed tar at `out` (links stay links); returns its size.
pub fn tar_dir(dir: &Path, out: &Path) -> io::Result<u64> {
    let file = std::fs::File::create(out)?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.append_dir_all("", dir)?;
    let mut writer = builder.into_inner()?;
    io::Write::flush(&mut writer)?;
    Ok(std::fs::metadata(out)?.len())
}

/// Uploads the tar at `path` (`size` bytes) for `lease`.
pub async fn upload_artifacts(
    client: &mut Client,
    lease: LeaseRef,
    path: &Path,
    size: u64,
) -> Result<UploadArtifactsResponse, UploadError> {
    let file = tokio::fs::File::open(path).await?;
    let begin = UploadArtifactsRequest {
        part: Some(Part::Begin(lease)),
    };
    let data = ReaderStream::with_capacity(file, CHUNK).scan((), |_, chunk| {
        std::future::ready(match chunk {
            Ok(data) => Some(UploadArtifactsRequest {
                part: Some(Part::Data(data.into())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_holds_the_tree_relative_to_the_directory() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("primary/sub")).expect("mkdir");
        std::fs::write(dir.path().join("primary/sub/a.txt"), "a").expect("write");
        std::fs::create_dir_all(dir.path().join("secondary/two")).expect("mkdir");
        std::os::unix::fs::symlink(
            "../../primary/sub/a.txt",
            dir.path().join("secondary/two/l"),
        )
        .expect("symlink");
        let out = tempfile::NamedTempFile::new().expect("tmp");
        let size = tar_dir(dir.path(), out.path()).expect("tar");
        assert!(size > 0);
        let mut archive = tar::Archive::new(std::fs::File::open(out.path()).expect("open"));
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let p = e.path().expect("path").display().to_string();
                p.trim_end_matches('/').to_string()
            })
            .filter(|p| !p.is_empty())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "primary",
                "primary/sub",
                "primary/sub/a.txt",
                "secondary",
                "secondary/two",
                "secondary/two/l"
            ]
        );
    }
}
