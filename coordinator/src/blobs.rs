//! Content-addressed blobs on local disk: uploaded sources and build artifacts, named
//! `sha256:<hex>` and stored once per content under `<data_dir>/blobs/sha256/`. (The `object_store`
//! backed store with S3 replaces this directory in the cache/artifact issue.)

use std::io;
use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;

/// Bytes per chunk when a blob is streamed out.
const CHUNK: usize = 256 * 1024;

#[derive(Clone)]
pub struct Blobs {
    root: PathBuf,
}

/// A blob that was written.
pub struct Stored {
    pub digest: String,
    pub size: u64,
}

/// A blob being written: bytes go to a temporary file; `finish` names it by its content.
pub struct Upload {
    file: tokio::fs::File,
    temp: tempfile::TempPath,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Blobs {
    pub fn open(data_dir: &Path) -> io::Result<Blobs> {
        let root = data_dir.join("blobs");
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Blobs { root })
    }

    /// Starts an upload of at most `limit` bytes.
    pub async fn upload(&self, limit: u64) -> io::Result<Upload> {
        let temp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        let (file, temp) = temp.into_parts();
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            temp,
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// The path of a stored blob; `None` for a malformed digest or a missing blob.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let path = self.root.join("sha256").join(hex.to_ascii_lowercase());
        (valid && path.is_file()).then_some(path)
    }

    /// A stored blob in chunks; NOT_FOUND when there is none.
    pub async fn read(
        &self,
        digest: &str,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, Status>> + Send + 'static, Status> {
        let path = self
            .path(digest)
            .ok_or_else(|| Status::not_found(format!("no blob {digest:?}")))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("opening blob {digest}: {e}")))?;
        Ok(futures_util::stream::unfold(
            Some(file),
            |file| async move {
                let mut file = file?;
                let mut buf = vec![0; CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), Some(file)))
                    }
                    Err(e) => Some((Err(Status::internal(format!("reading blob: {e}"))), None)),
                }
            },
        ))
    }

    /// Drains a gRPC byte stream into a blob.
    pub async fn store_stream<S>(&self, limit: u64, mut chunks: S) -> Result<Stored, Status>
    where
        S: Stream<Item = Result<Vec<u8>, Status>> + Unpin,
    {
        let mut upload = self.upload(limit).await.map_err(internal)?;
        while let Some(chunk) = chunks.next().await {
            upload.write(&chunk?).await?;
        }
        upload.finish(self, |_| Ok(())).await
    }
}

impl Upload {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Status> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(Status::resource_exhausted(format!(
                "upload larger than the limit of {} bytes (max_upload_bytes)",
                self.limit
            )));
        }
        self.hasher.update(data);
        self.file.write_all(data).await.map_err(internal)
    }

    /// Flushes, runs `check` on the complete file (refusing it with its error), then stores it
    /// under its digest.
    pub async fn finish(
        mut self,
        blobs: &Blobs,
        check: impl FnOnce(&Path) -> Result<(), Status> + Send + 'static,
    ) -> Result<Stored, Status> {
        self.file.flush().await.map_err(internal)?;
        self.file.sync_data().await.map_err(internal)?;
        drop(self.file);
        let digest = format!("sha256:{:x}", self.hasher.finalize());
        let temp = self.temp;
        let target = blobs
            .root
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"));
        tokio::task::spawn_blocking(move || {
            check(&temp)?;
            temp.persist(&target)
                .map_err(|e| internal(e.error))
                .map(|_| ())
        })
        .await
        .map_err(internal)??;
        Ok(Stored {
            digest,
            size: self.size,
        })
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("blob store: {e}"))
}
