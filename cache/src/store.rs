//! The blob store: content-addressed blobs (`sha256:<hex>` of their content) in an
//! [`ObjectStore`], a local directory or an S3-compatible bucket, encoded by [`crate::codec`].
//!
//! Files move through it as streams, never whole in memory: a blob is hashed first (so one the
//! store has is not sent again), then compressed and sealed on a blocking thread while the encoded
//! bytes go up as a multipart upload with several parts in flight; a large blob comes back as
//! ranged reads in parallel, decoded on a blocking thread, and is checked against its digest
//! before it is given its final name.

use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::codec::{self, EncryptionKey};

/// Encoded bytes per multipart part and per ranged read.
const PART: usize = 8 << 20;
/// A blob whose encoded bytes fit in this goes up in one PUT, as every cache segment (16 MiB at
/// most, and a little more encoded) does: a multipart upload costs three requests and, on some
/// servers, a second copy of the object when it completes.
const ONE_PUT: usize = 17 << 20;
/// Parts uploaded, and ranges read, at once.
const PARALLEL: usize = 4;
/// Existence checks in flight at once.
const HEADS: usize = 16;

/// A blob's content is handed on (to a file, to a reader) in pieces of up to this much.
const DECODED_PIECE: usize = 1 << 20;

/// Where blobs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A directory (created if missing).
    Local { root: PathBuf },
    /// An S3-compatible service.
    S3(S3Config),
}

/// An S3-compatible bucket. Credentials are not printed.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host:port`; empty = AWS's endpoint for the region.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key` (most
    /// self-hosted services want this).
    pub path_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// How to open a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Keys start with this (`team-a/`); empty = none.
    pub prefix: String,
    /// Encrypts every blob written when set (blobs written without one stay readable).
    pub key: Option<EncryptionKey>,
    /// zstd level (1 fast .. 19 small; 3 is zstd's default).
    pub level: i32,
}

/// Blob store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("malformed digest {0:?}: expected sha256:<64 hex digits>")]
    BadDigest(String),
    #[error("no blob {0} in the store")]
    NotFound(String),
    #[error("blob content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} cannot be read back: {reason}")]
    Corrupt { digest: String, reason: String },
    #[error("the store ({store}) failed: {source}")]
    Backend {
        store: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot configure the store: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A blob's name: `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, StoreError> {
        let hex = text
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| StoreError::BadDigest(text.to_string()))?;
        Ok(Digest(format!("sha256:{}", hex.to_ascii_lowercase())))
    }

    fn of(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{:x}", hasher.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `put_file` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub digest: Digest,
    /// The content's size.
    pub size: u64,
    /// False when the store already had the blob (nothing was sent).
    pub uploaded: bool,
}

/// Traffic and lookups since the store was opened.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Encoded bytes written to the backend.
    pub bytes_in: AtomicU64,
    /// Encoded bytes read from the backend.
    pub bytes_out: AtomicU64,
    /// Existence checks that found the blob, and that did not.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// A content-addressed blob store (see the module docs).
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// The S3 backend again, to sign URLs with (`None` for a local directory).
    signer: Option<Arc<object_store::aws::AmazonS3>>,
    prefix: String,
    key: Option<EncryptionKey>,
    level: i32,
    describe: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("store", &self.describe)
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    pub fn open(config: &StoreConfig) -> Result<BlobStore, StoreError> {
        type Opened = (
            Arc<dyn ObjectStore>,
            Option<Arc<object_store::aws::AmazonS3>>,
            String,
        );
        let (inner, signer, describe): Opened = match &config.backend {
            Backend::Local { root } => {
                std::fs::create_dir_all(root)?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| StoreError::Config(e.to_string()))?;
                (Arc::new(fs), None, format!("directory {}", root.display()))
            }
            Backend::S3(s3) => {
                if s3.bucket.is_empty() {
                    return Err(StoreError::Config("the S3 backend needs a bucket".into()));
                }
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_region(&s3.region)
                    .with_bucket_name(&s3.bucket)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .with_virtual_hosted_style_request(!s3.path_style)
                    // Every blob is checked against its digest on the way back: the request
                    // signature need not hash the payload a second time.
                    .with_unsigned_payload(true)
                    // A store that is down fails within seconds: builds go on without their
                    // cache rather than wait minutes for it.
                    .with_retry(object_store::RetryConfig {
                        max_retries: 2,
                        retry_timeout: std::time::Duration::from_secs(10),
                        ..Default::default()
                    });
                if !s3.endpoint.is_empty() {
                    b = b
                        .with_endpoint(&s3.endpoint)
                        .with_allow_http(s3.endpoint.starts_with("http://"));
                }
                let s3_store = Arc::new(b.build().map_err(|e| StoreError::Config(e.to_string()))?);
                let at = match s3.endpoint.as_str() {
                    "" => format!("s3://{}", s3.bucket),
                    endpoint => format!("s3://{} at {endpoint}", s3.bucket),
                };
                (s3_store.clone(), Some(s3_store), at)
            }
        };
        Ok(BlobStore {
            inner,
            signer,
            prefix: config.prefix.trim_matches('/').to_string(),
            key: config.key.clone(),
            level: config.level,
            describe,
            metrics: Arc::new(Metrics::default()),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where blobs are: `<prefix>/blobs/sha256`.
    fn blobs_dir(&self) -> String {
        match self.prefix.as_str() {
            "" => "blobs/sha256".to_string(),
            p => format!("{p}/blobs/sha256"),
        }
    }

    fn location(&self, digest: &Digest) -> ObjectPath {
        ObjectPath::from(format!("{}/{}", self.blobs_dir(), digest.hex()))
    }

    fn backend(&self) -> impl Fn(object_store::Error) -> StoreError + '_ {
        move |source| StoreError::Backend {
            store: self.describe.clone(),
            source,
        }
    }

    /// Which of `digests` the store has, in order (checked concurrently).
    pub async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let locations: Vec<ObjectPath> = digests.iter().map(|d| self.location(d)).collect();
        let found: Vec<bool> = futures_util::stream::iter(locations)
            .map(|location| {
                let inner = self.inner.clone();
                async move {
                    match inner.head(&location).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffered(HEADS)
            .try_collect()
            .await
            .map_err(self.backend())?;
        let hits = found.iter().filter(|f| **f).count() as u64;
        self.metrics.hits.fetch_add(hits, Ordering::Relaxed);
        self.metrics
            .misses
            .fetch_add(found.len() as u64 - hits, Ordering::Relaxed);
        Ok(found)
    }

    /// Stores the file's content unless the store has it; with `expected`, refuses content
    /// whose digest differs (nothing is stored then).
    pub async fn put_file(
        &self,
        path: &Path,
        expected: Option<&Digest>,
    ) -> Result<Put, StoreError> {
        let (digest, size) = hash_file(path.to_path_buf()).await?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        self.put_hashed(path, digest, size).await
    }

    /// [`BlobStore::put_file`] of a file whose digest and size the caller computed as it wrote
    /// the file (so it is not read twice); the caller answers for them.
    pub async fn put_hashed(
        &self,
        path: &Path,
        digest: Digest,
        size: u64,
    ) -> Result<Put, StoreError> {
        let file = path.to_path_buf();
        self.put_encoded(digest, size, move || {
            Ok(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(file)?,
            ))
        })
        .await
    }

    /// Stores content held in memory (a cache segment) unless the store has it, under the digest
    /// summed here: hashed, then encoded whole, on a blocking thread, and sent in one PUT (no
    /// temporary file).
    pub async fn put_bytes(&self, data: Bytes) -> Result<Put, StoreError> {
        let (data, digest) = blocking(move || {
            let digest = Digest::of(Sha256::new_with_prefix(&data));
            Ok((data, digest))
        })
        .await?;
        let size = data.len() as u64;
        if self.has(&digest).await? {
            return Ok(Put {
                digest,
                size,
                uploaded: false,
            });
        }
        let (key, level) = (self.key.clone(), self.level);
        let encoded = blocking(move || codec::encode_slice(&data, key.as_ref(), level)).await?;
        self.put_whole(&self.location(&digest), encoded).await?;
        Ok(Put {
            digest,
            size,
            uploaded: true,
        })
    }

    async fn has(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.contains(std::slice::from_ref(digest)).await?[0])
    }

    /// Stores what `content` reads under `expected`, the digest its sender claims for it, as it
    /// is read (no temporary file): summed on the way, and refused with
    /// [`StoreError::DigestMismatch`] when it sums to something else, before anything is visible
    /// (the upload is abandoned). When the store has the blob already, the content is still read
    /// and checked, and not sent.
    pub async fn put_checked<R: Read + Send + 'static>(
        &self,
        expected: Digest,
        content: R,
    ) -> Result<Put, StoreError> {
        let summed = Arc::new(std::sync::Mutex::new(None));
        let checked = Checked {
            inner: content,
            hasher: Sha256::new(),
            size: 0,
            expected: expected.clone(),
            summed: summed.clone(),
        };
        let uploaded = match self.has(&expected).await? {
            true => {
                blocking(move || {
                    let mut checked = checked;
                    std::io::copy(&mut checked, &mut std::io::sink()).map(|_| false)
                })
                .await
            }
            false => self
                .encode_up(expected.clone(), move || Ok(checked))
                .await
                .map(|()| true),
        };
        let summed = summed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (uploaded, summed) {
            (_, Some((actual, _))) if actual != expected => Err(StoreError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            }),
            (Ok(uploaded), Some((_, size))) => Ok(Put {
                digest: expected,
                size,
                uploaded,
            }),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(StoreError::Io(std::io::Error::other(
                "the content was not read to its end",
            ))),
        }
    }

    /// Stores what `open` reads under `digest` unless the store has it: encoded on a blocking
    /// thread while the encoded bytes go up.
    async fn put_encoded<R: Read>(
        &self,
        digest: Digest,
        size: u64,
        open: impl FnOnce() -> std::io::Result<R> + Send + 'static,
    ) -> Result<Put, StoreError> {
        if self.has(&digest).await? {
            return Ok(Put {
                digest,
                size,
                uploaded: false,
            });
        }
        self.encode_up(digest.clone(), open).await?;
        Ok(Put {
            digest,
            size,
            uploaded: true,
        })
    }

    /// Stores what `open` reads under `digest`: encoded on a blocking thread while the encoded
    /// bytes go up; an error of the reading abandons the upload.
    async fn encode_up<R: Read>(
        &self,
        digest: Digest,
        open: impl FnOnce() -> std::io::Result<R> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel::<Option<Bytes>>(PARALLEL * 2);
        let (key, level) = (self.key.clone(), self.level);
        let encoder = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let out = ChannelWriter {
                tx,
                buf: Vec::with_capacity(1 << 20),
            };
            codec::encode(open()?, out, key.as_ref(), level)?.finish()
        });
        let uploaded = self.upload(&self.location(&digest), rx).await;
        let encoded = encoder
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        match (uploaded, encoded) {
            (Ok(()), _) => Ok(()),
            // The encoder's failure ended the upload (which was then abandoned): it says why.
            (Err(StoreError::Io(_)), Err(e)) => Err(StoreError::Io(e)),
            (Err(e), _) => Err(e),
        }
    }

    /// Sends the encoded chunks: one PUT when they fit in [`ONE_PUT`], else a multipart upload with
    /// [`PARALLEL`] parts in flight (aborted on failure, so nothing half-written is visible). The
    /// encoder ends with `None`; a channel closed without it means the encoding failed, and
    /// nothing is stored.
    async fn upload(
        &self,
        location: &ObjectPath,
        mut rx: mpsc::Receiver<Option<Bytes>>,
    ) -> Result<(), StoreError> {
        let broken = || StoreError::Io(std::io::Error::other("the encoder stopped"));
        let mut first = Vec::new();
        while first.len() < ONE_PUT {
            match rx.recv().await.ok_or_else(broken)? {
                Some(chunk) => first.extend_from_slice(&chunk),
                None => return self.put_whole(location, first).await,
            }
        }
        let upload = self
            .inner
            .put_multipart(location)
            .await
            .map_err(self.backend())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut sent = first.len() as u64;
        writer.write(&first);
        drop(first);
        let result = async {
            loop {
                match rx.recv().await.ok_or_else(broken)? {
                    Some(chunk) => {
                        writer
                            .wait_for_capacity(PARALLEL)
                            .await
                            .map_err(self.backend())?;
                        writer.write(&chunk);
                        sent += chunk.len() as u64;
                    }
                    None => return Ok(()),
                }
            }
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await.map_err(self.backend())?;
                self.metrics.bytes_in.fetch_add(sent, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                writer.abort().await.ok();
                Err(e)
            }
        }
    }

    /// Stores encoded bytes in one PUT.
    async fn put_whole(&self, location: &ObjectPath, encoded: Vec<u8>) -> Result<(), StoreError> {
        let n = encoded.len() as u64;
        self.inner
            .put(location, PutPayload::from(encoded))
            .await
            .map_err(self.backend())?;
        self.metrics.bytes_in.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the blob's content to `dest` (replaced only once the content checked out against
    /// its digest); returns its size.
    pub async fn get_file(&self, digest: &Digest, dest: &Path) -> Result<u64, StoreError> {
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let temp = tempfile::NamedTempFile::new_in(&dir)?;
        let mut file = temp.reopen()?;
        self.decode(digest, move |data: Bytes| {
            file.write_all(&data).map(|()| true)
        })
        .await?;
        let written = temp.as_file().metadata()?.len();
        temp.persist(dest).map_err(|e| StoreError::Io(e.error))?;
        Ok(written)
    }

    /// The blob's content from byte `offset` on, decoded as it is read, never whole on disk or
    /// in memory. A content that does not match its digest ends the stream with
    /// [`StoreError::DigestMismatch`] (after the bytes: the reader checks before it keeps them).
    pub async fn get_stream(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<mpsc::Receiver<Result<Bytes, StoreError>>, StoreError> {
        let (tx, rx) = mpsc::channel(PARALLEL * 2);
        let store = self.clone();
        let digest = digest.clone();
        // Found (or not) before the stream starts: a missing blob is an error of the call.
        let size = self.size_of(&digest).await?;
        tokio::spawn(async move {
            let out = tx.clone();
            let mut skip = offset;
            let sent = store
                .decode_sized(&digest, size, move |data: Bytes| {
                    let from = skip.min(data.len() as u64) as usize;
                    skip -= from as u64;
                    if from == data.len() {
                        return Ok(true);
                    }
                    // false: the reader went away, so there is no one left to send to.
                    Ok(out.blocking_send(Ok(data.slice(from..))).is_ok())
                })
                .await;
            if let Err(e) = sent {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn size_of(&self, digest: &Digest) -> Result<u64, StoreError> {
        match self.inner.head(&self.location(digest)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StoreError::NotFound(digest.to_string()))
            }
            Err(e) => Err(self.backend()(e)),
        }
    }

    /// Reads and decodes the blob, handing its content to `sink` on a blocking thread in pieces
    /// of up to 1 MiB, each in a buffer of its own (`sink` answers false to stop early), and
    /// checks it against its digest.
    async fn decode(
        &self,
        digest: &Digest,
        sink: impl FnMut(Bytes) -> std::io::Result<bool> + Send + 'static,
    ) -> Result<(), StoreError> {
        let size = self.size_of(digest).await?;
        self.decode_sized(digest, size, sink).await
    }

    async fn decode_sized(
        &self,
        digest: &Digest,
        size: u64,
        mut sink: impl FnMut(Bytes) -> std::io::Result<bool> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel::<Bytes>(PARALLEL * 2);
        let (key, expected) = (self.key.clone(), digest.clone());
        let decoder = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let reader = ChannelReader {
                rx,
                chunk: Bytes::new(),
            };
            let corrupt = |e: std::io::Error| StoreError::Corrupt {
                digest: expected.to_string(),
                reason: e.to_string(),
            };
            let mut content = codec::decode(reader, key.as_ref()).map_err(corrupt)?;
            let mut hasher = Sha256::new();
            loop {
                let mut piece = Vec::with_capacity(DECODED_PIECE);
                (&mut content)
                    .take(DECODED_PIECE as u64)
                    .read_to_end(&mut piece)
                    .map_err(corrupt)?;
                if piece.is_empty() {
                    break;
                }
                hasher.update(&piece);
                if !sink(Bytes::from(piece))? {
                    return Ok(());
                }
            }
            let actual = Digest::of(hasher);
            if actual != expected {
                return Err(StoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
            Ok(())
        });
        let fetched = self.fetch(&self.location(digest), size, tx).await;
        let decoded = decoder
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        // A failed read ends the decoder's input early: the read's error says why.
        fetched?;
        decoded
    }

    /// Reads the object in order into `tx`: whole when small, else [`PARALLEL`] ranges at once.
    async fn fetch(
        &self,
        location: &ObjectPath,
        size: u64,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<(), StoreError> {
        let ranges: Vec<Range<u64>> = (0..size)
            .step_by(PART)
            .map(|start| start..(start + PART as u64).min(size))
            .collect();
        let mut chunks = futures_util::stream::iter(ranges)
            .map(|r| {
                let (inner, location) = (self.inner.clone(), location.clone());
                async move { inner.get_range(&location, r).await }
            })
            .buffered(PARALLEL);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(self.backend())?;
            self.metrics
                .bytes_out
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if tx.send(chunk).await.is_err() {
                // The decoder stopped (and says why).
                break;
            }
        }
        Ok(())
    }

    /// Every blob in the store, with when it was written (milliseconds since the epoch).
    pub async fn list(&self) -> Result<Vec<(Digest, i64)>, StoreError> {
        let dir = ObjectPath::from(self.blobs_dir());
        let objects: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(self.backend())?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let digest = Digest::parse(&format!("sha256:{name}")).ok()?;
                Some((digest, meta.last_modified.timestamp_millis()))
            })
            .collect())
    }

    /// Removes a blob; one that is not there is fine.
    pub async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match self.inner.delete(&self.location(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend()(e)),
        }
    }

    /// Where the plain copy `name` is: `<prefix>/plain/<name>`.
    fn plain_location(&self, name: &str) -> ObjectPath {
        match self.prefix.as_str() {
            "" => ObjectPath::from(format!("plain/{name}")),
            p => ObjectPath::from(format!("{p}/plain/{name}")),
        }
    }

    /// Stores a file as it is, neither compressed nor encrypted, under `name` (for a presigned
    /// URL: whoever holds one reads the object without Kiln), in parts for a large file.
    pub async fn put_plain(&self, name: &str, path: &Path) -> Result<(), StoreError> {
        let location = self.plain_location(name);
        let mut writer = object_store::buffered::BufWriter::new(self.inner.clone(), location);
        let mut file = tokio::fs::File::open(path).await?;
        tokio::io::copy(&mut file, &mut writer).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut writer).await?;
        Ok(())
    }

    /// Removes the plain copy `name`; one that is not there is fine.
    pub async fn delete_plain(&self, name: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.plain_location(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend()(e)),
        }
    }

    /// A URL that reads the plain copy `name` for `expires`, signed with the store's
    /// credentials; `None` when the backend cannot sign (a local directory).
    pub async fn signed_url(
        &self,
        name: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        use object_store::signer::Signer;
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(http::Method::GET, &self.plain_location(name), expires)
            .await
            .map_err(self.backend())?;
        Ok(Some(url.to_string()))
    }

    /// The backend underneath (for tests that tamper with stored objects), and where a blob is.
    pub fn raw(&self, digest: &Digest) -> (Arc<dyn ObjectStore>, ObjectPath) {
        (self.inner.clone(), self.location(digest))
    }
}

/// A reader that sums what passes through it and, at its end, puts the sum and the size in
/// `summed` and fails unless the sum is `expected` (so an upload reading it is abandoned).
struct Checked<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    expected: Digest,
    summed: Arc<std::sync::Mutex<Option<(Digest, u64)>>>,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            return Ok(n);
        }
        let actual = Digest::of(self.hasher.clone());
        let matches = actual == self.expected;
        *self.summed.lock().unwrap_or_else(|e| e.into_inner()) = Some((actual, self.size));
        match matches {
            true => Ok(0),
            false => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the content does not sum to {}", self.expected),
            )),
        }
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    let done = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    Ok(done?)
}

/// The SHA-256 and size of a file, read on a blocking thread.
async fn hash_file(path: PathBuf) -> Result<(Digest, u64), StoreError> {
    blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((Digest::of(hasher), size))
    })
    .await
}

/// The encoder's output, in 1 MiB chunks, to the uploader; `finish` marks the clean end.
struct ChannelWriter {
    tx: mpsc::Sender<Option<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(1 << 20),
        ));
        self.tx
            .blocking_send(Some(chunk))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.send()?;
        self.tx
            .blocking_send(None)
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The downloader's chunks, read by the decoder.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
