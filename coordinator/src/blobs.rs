//! Uploaded sources and build artifacts, named `sha256:<hex>` by their content, in the
//! coordinator's blob store ([`kiln_cache::BlobStore`]: a local directory by default, an
//! S3-compatible bucket shared by every coordinator of a cluster). Uploads land in a temporary
//! file under `<data_dir>/blobs/tmp` first, are checked whole, then go to the store (once per
//! content); reads stream a blob as it is decoded (the reader checks the digest).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use kiln_cache::{BlobStore, Digest, StoreConfig, StoreError};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tonic::Status;

/// Uploads held in memory at once ([`Blobs::store_stream`]); more wait their turn, so cache
/// segments (64 MiB at most) take at most 1 GiB of the coordinator's memory.
const IN_MEMORY: usize = 16;

#[derive(Clone)]
pub struct Blobs {
    store: BlobStore,
    tmp: PathBuf,
    in_memory: Arc<Semaphore>,
    /// `[store] presigned_artifacts`: artifacts are also kept plain (see [`artifacts_name`]).
    plain_artifacts: bool,
}

/// The name of a build's plain artifacts tar: `artifacts/<project>/<build uuid>.tar`.
pub fn artifacts_name(build_id: &str) -> String {
    format!("artifacts/{}.tar", build_id.replacen(':', "/", 1))
}

/// A blob that was written.
pub struct Stored {
    pub digest: String,
    pub size: u64,
}

/// A blob being written: bytes go to a temporary file; `finish` stores it by its content.
pub struct Upload {
    file: tokio::fs::File,
    temp: tempfile::TempPath,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

/// A blob decoded into a temporary file, removed when this is dropped.
pub struct Fetched(tempfile::TempPath);

impl Fetched {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Blobs {
    pub fn open(data_dir: &Path, store: &StoreConfig) -> anyhow::Result<Blobs> {
        let tmp = data_dir.join("blobs").join("tmp");
        std::fs::create_dir_all(&tmp)?;
        Ok(Blobs {
            store: BlobStore::open(store)?,
            tmp,
            in_memory: Arc::new(Semaphore::new(IN_MEMORY)),
            plain_artifacts: false,
        })
    }

    /// Keeps artifacts plain too (`[store] presigned_artifacts`).
    pub fn with_plain_artifacts(mut self, on: bool) -> Blobs {
        self.plain_artifacts = on;
        self
    }

    /// A presigned URL to a build's plain artifacts tar, valid for `expires`.
    pub async fn artifacts_url(
        &self,
        build_id: &str,
        expires: std::time::Duration,
    ) -> Result<String, Status> {
        let refused = || {
            Status::failed_precondition(
                "this server hands out no artifact URLs: it needs [store] backend = \"s3\" and \
                 presigned_artifacts = true (download with `kiln artifacts ID -o DIR` instead)",
            )
        };
        if !self.plain_artifacts {
            return Err(refused());
        }
        let name = artifacts_name(build_id);
        let url = self.store.signed_url(&name, expires).await;
        url.map_err(store_status)?.ok_or_else(refused)
    }

    /// Removes a build's plain artifacts tar, if artifacts are kept plain.
    pub async fn delete_plain_artifacts(&self, build_id: &str) -> Result<(), Status> {
        match self.plain_artifacts {
            true => self
                .store
                .delete_plain(&artifacts_name(build_id))
                .await
                .map_err(store_status),
            false => Ok(()),
        }
    }

    /// Starts an upload of at most `limit` bytes.
    pub async fn upload(&self, limit: u64) -> io::Result<Upload> {
        let temp = tempfile::NamedTempFile::new_in(&self.tmp)?;
        let (file, temp) = temp.into_parts();
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            temp,
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Bytes in and out of the store, and existence checks that found the blob or not, since it
    /// was opened.
    pub fn traffic(&self) -> [u64; 4] {
        use std::sync::atomic::Ordering::Relaxed;
        let m = self.store.metrics();
        [&m.bytes_in, &m.bytes_out, &m.hits, &m.misses].map(|c| c.load(Relaxed))
    }

    /// [`Blobs::contains_all`] for a HasBlobs call, which may ask about at most 1000 blobs.
    pub async fn has_blobs(&self, digests: &[String]) -> Result<Vec<bool>, Status> {
        if digests.len() > crate::caches::MAX_DIGESTS {
            return Err(Status::invalid_argument(format!(
                "at most {} digests per HasBlobs",
                crate::caches::MAX_DIGESTS
            )));
        }
        self.contains_all(digests).await
    }

    /// Every blob in the store (`sha256:<hex>`) and when it was written (ms since the epoch).
    pub async fn list(&self) -> Result<Vec<(String, i64)>, Status> {
        let listed = self.store.list().await.map_err(store_status)?;
        Ok(listed
            .into_iter()
            .map(|(digest, written)| (digest.to_string(), written))
            .collect())
    }

    /// Removes a blob (one that is not there, or a malformed digest, is fine).
    pub async fn delete(&self, digest: &str) -> Result<(), Status> {
        let Ok(parsed) = Digest::parse(digest) else {
            return Ok(());
        };
        self.store.delete(&parsed).await.map_err(store_status)
    }

    /// Whether the store has the blob (false for a malformed digest).
    pub async fn contains(&self, digest: &str) -> Result<bool, Status> {
        let found = self.contains_all(&[digest.to_string()]).await?;
        Ok(found.first().copied().unwrap_or(false))
    }

    /// Which of the blobs the store has, in order (false for a malformed digest), in one batch.
    pub async fn contains_all(&self, digests: &[String]) -> Result<Vec<bool>, Status> {
        let parsed: Vec<Option<Digest>> = digests.iter().map(|d| Digest::parse(d).ok()).collect();
        let valid: Vec<Digest> = parsed.iter().flatten().cloned().collect();
        let mut found = self
            .store
            .contains(&valid)
            .await
            .map_err(store_status)?
            .into_iter();
        Ok(parsed
            .iter()
            .map(|d| d.is_some() && found.next().unwrap_or(false))
            .collect())
    }

    /// The blob in a temporary file; NOT_FOUND when there is none.
    pub async fn fetch(&self, digest: &str) -> Result<Fetched, Status> {
        let parsed =
            Digest::parse(digest).map_err(|_| Status::not_found(format!("no blob {digest:?}")))?;
        let temp = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(internal)?
            .into_temp_path();
        self.store
            .get_file(&parsed, &temp)
            .await
            .map_err(store_status)?;
        Ok(Fetched(temp))
    }

    /// A stored blob in chunks from byte `offset` on, decoded as it is read; NOT_FOUND when there
    /// is none.
    pub async fn read(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, Status>> + Send + 'static, Status> {
        let parsed =
            Digest::parse(digest).map_err(|_| Status::not_found(format!("no blob {digest:?}")))?;
        let chunks = self
            .store
            .get_stream(&parsed, offset)
            .await
            .map_err(store_status)?;
        Ok(ReceiverStream::new(chunks).map(|chunk| chunk.map_err(store_status)))
    }

    /// Drains a gRPC byte stream of at most `limit` bytes (a cache segment) into a blob, held in
    /// memory on the way (no temporary file), [`IN_MEMORY`] at once.
    pub async fn store_stream<S, B>(&self, limit: u64, mut chunks: S) -> Result<Stored, Status>
    where
        S: Stream<Item = Result<B, Status>> + Unpin,
        B: AsRef<[u8]>,
    {
        let _turn = self.in_memory.acquire().await.map_err(internal)?;
        let mut data = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let chunk = chunk.as_ref();
            check_limit(data.len() as u64 + chunk.len() as u64, limit)?;
            data.extend_from_slice(chunk);
        }
        let put = self
            .store
            .put_bytes(bytes::Bytes::from(data))
            .await
            .map_err(store_status)?;
        Ok(Stored {
            digest: put.digest.to_string(),
            size: put.size,
        })
    }

    /// Stores a build's artifacts tar of at most `limit` bytes. With `claimed`, the digest the
    /// worker summed, it goes into the store as it arrives and is refused (nothing stored) when
    /// it sums to something else; without it, or when artifacts are also kept plain (see
    /// [`artifacts_name`]), it is staged in a temporary file first.
    pub async fn store_artifacts<S>(
        &self,
        build_id: &str,
        limit: u64,
        claimed: Option<Digest>,
        chunks: S,
    ) -> Result<Stored, Status>
    where
        S: Stream<Item = Result<Vec<u8>, Status>> + Send + Unpin + 'static,
    {
        match claimed {
            Some(digest) if !self.plain_artifacts => {
                self.store_claimed(digest, limit, chunks).await
            }
            _ => self.store_staged(build_id, limit, chunks).await,
        }
    }

    async fn store_claimed<S>(
        &self,
        claimed: Digest,
        limit: u64,
        chunks: S,
    ) -> Result<Stored, Status>
    where
        S: Stream<Item = Result<Vec<u8>, Status>> + Send + Unpin + 'static,
    {
        // Why the stream stopped (the sender's error, or the limit), to answer with as it is.
        let stopped = Arc::new(std::sync::Mutex::new(None::<Status>));
        let noted = stopped.clone();
        let mut size = 0u64;
        let bytes = chunks.map(move |chunk| {
            let checked = chunk.and_then(|data| {
                size += data.len() as u64;
                check_limit(size, limit).map(|()| bytes::Bytes::from(data))
            });
            checked.map_err(|status| {
                let error = io::Error::other(status.message().to_string());
                *noted.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                error
            })
        });
        let content = SyncIoBridge::new(StreamReader::new(bytes));
        let put = self.store.put_checked(claimed, content).await;
        if let Some(status) = stopped.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(status);
        }
        match put {
            Ok(put) => Ok(Stored {
                digest: put.digest.to_string(),
                size: put.size,
            }),
            Err(e @ StoreError::DigestMismatch { .. }) => Err(Status::invalid_argument(format!(
                "the artifacts tar was refused: {e}"
            ))),
            Err(e) => Err(store_status(e)),
        }
    }

    async fn store_staged<S>(&self, build_id: &str, limit: u64, chunks: S) -> Result<Stored, Status>
    where
        S: Stream<Item = Result<Vec<u8>, Status>> + Unpin,
    {
        let mut upload = self.drain(limit, chunks).await?;
        if self.plain_artifacts {
            upload.file_flush().await?;
            self.store
                .put_plain(&artifacts_name(build_id), &upload.temp)
                .await
                .map_err(store_status)?;
        }
        upload.finish(self, |_| Ok(())).await
    }

    async fn drain<S>(&self, limit: u64, mut chunks: S) -> Result<Upload, Status>
    where
        S: Stream<Item = Result<Vec<u8>, Status>> + Unpin,
    {
        let mut upload = self.upload(limit).await.map_err(internal)?;
        while let Some(chunk) = chunks.next().await {
            upload.write(&chunk?).await?;
        }
        Ok(upload)
    }
}

impl Upload {
    async fn file_flush(&mut self) -> Result<(), Status> {
        self.file.flush().await.map_err(internal)
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), Status> {
        self.size += data.len() as u64;
        check_limit(self.size, self.limit)?;
        self.hasher.update(data);
        self.file.write_all(data).await.map_err(internal)
    }

    /// Flushes, runs `check` on the complete file (refusing it with its error), then stores it
    /// under the digest summed as it was written.
    pub async fn finish(
        mut self,
        blobs: &Blobs,
        check: impl FnOnce(&Path) -> Result<(), Status> + Send + 'static,
    ) -> Result<Stored, Status> {
        self.file.flush().await.map_err(internal)?;
        drop(self.file);
        let digest =
            Digest::parse(&format!("sha256:{:x}", self.hasher.finalize())).map_err(internal)?;
        let temp = self.temp;
        let temp = tokio::task::spawn_blocking(move || check(&temp).map(|()| temp))
            .await
            .map_err(internal)??;
        blobs
            .store
            .put_hashed(&temp, digest.clone(), self.size)
            .await
            .map_err(store_status)?;
        Ok(Stored {
            digest: digest.to_string(),
            size: self.size,
        })
    }
}

/// Refuses an upload that reached `size` bytes when at most `limit` are allowed.
fn check_limit(size: u64, limit: u64) -> Result<(), Status> {
    match size > limit {
        true => Err(Status::resource_exhausted(format!(
            "upload larger than the limit of {limit} bytes (max_upload_bytes)"
        ))),
        false => Ok(()),
    }
}

/// A missing blob is NOT_FOUND; a store that is down is UNAVAILABLE (clients retry); the rest is
/// the coordinator's fault.
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(_) | StoreError::BadDigest(_) => Status::not_found(e.to_string()),
        StoreError::Backend { .. } => Status::unavailable(e.to_string()),
        e => internal(e),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("blob store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_blobs(dir: &Path) -> Blobs {
        let config = StoreConfig {
            backend: kiln_cache::Backend::Local {
                root: dir.join("store"),
            },
            prefix: String::new(),
            key: None,
            level: 3,
        };
        Blobs::open(dir, &config).expect("blobs")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_artifacts_tar_with_a_claimed_digest_is_stored_as_it_comes_and_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = local_blobs(dir.path());
        let tar: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::parse(&format!("sha256:{:x}", Sha256::digest(&tar))).expect("digest");
        let chunks = |data: &[u8]| {
            let chunks: Vec<Result<Vec<u8>, Status>> =
                data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
            futures_util::stream::iter(chunks)
        };
        // A false claim is refused, and nothing is stored.
        let mut forged = tar.clone();
        forged[2_999_999] ^= 1;
        let e = blobs
            .store_artifacts("p:1", 1 << 30, Some(digest.clone()), chunks(&forged))
            .await
            .err()
            .expect("a false claim");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains("does not match"), "{e}");
        assert_eq!(
            blobs
                .store
                .contains(std::slice::from_ref(&digest))
                .await
                .expect("contains"),
            [false]
        );
        // Over the limit: refused as such.
        let e = blobs
            .store_artifacts("p:1", 1_000_000, Some(digest.clone()), chunks(&tar))
            .await
            .err()
            .expect("over the limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        // The sender's own error ends it with that error.
        let broken = chunks(&tar[..500_000]).chain(futures_util::stream::iter([Err(
            Status::cancelled("the worker went away"),
        )]));
        let e = blobs
            .store_artifacts("p:1", 1 << 30, Some(digest.clone()), Box::pin(broken))
            .await
            .err()
            .expect("cut");
        assert_eq!(e.code(), tonic::Code::Cancelled, "{e}");
        // A true one is stored under it, and reads back whole.
        let stored = blobs
            .store_artifacts("p:1", 1 << 30, Some(digest.clone()), chunks(&tar))
            .await
            .expect("stored");
        assert_eq!(
            (stored.digest.as_str(), stored.size),
            (digest.as_str(), 3_000_000)
        );
        let back = dir.path().join("back");
        blobs.store.get_file(&digest, &back).await.expect("get");
        assert_eq!(std::fs::read(&back).expect("read"), tar);
    }

    #[tokio::test]
    async fn segments_beyond_the_bound_wait_for_one_to_be_stored() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = local_blobs(dir.path());
        // IN_MEMORY uploads whose last chunk has not come yet...
        let mut senders = Vec::new();
        let mut held = tokio::task::JoinSet::new();
        for i in 0..IN_MEMORY {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, Status>>(1);
            tx.send(Ok(vec![i as u8; 1024])).await.expect("send");
            senders.push(tx);
            let blobs = blobs.clone();
            held.spawn(async move { blobs.store_stream(1 << 20, ReceiverStream::new(rx)).await });
        }
        // ...hold every turn...
        let all_taken = async {
            while blobs.in_memory.available_permits() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all_taken)
            .await
            .expect("each upload held in memory takes a turn");
        // ...so one more, whole already, waits (stored in milliseconds otherwise).
        let mut next = tokio::spawn({
            let blobs = blobs.clone();
            async move {
                let whole = futures_util::stream::iter([Ok(b"next".to_vec())]);
                blobs.store_stream(1 << 20, whole).await
            }
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(500), &mut next).await;
        assert!(waited.is_err(), "an upload beyond the bound went ahead");
        // One ends: the waiting one is stored.
        senders.remove(0);
        let stored = next.await.expect("join").expect("stored");
        assert_eq!(stored.size, 4);
        drop(senders);
        while let Some(done) = held.join_next().await {
            done.expect("join").expect("stored");
        }
    }
}
