//! A cache store straight over a blob store, as the coordinator uses it (for the cache tests and
//! the cache benchmark): segments going in are hashed and written to a temporary file, which the
//! store takes under that digest; segments coming out stream as they are decoded. The index is not
//! kept: lookups find nothing, saves succeed.

use bytes::Bytes;
use std::path::Path;

use kiln_cache::{Backend, BlobStore, Digest, StoreConfig};
use kiln_proto::v1::CacheEntry;
use kiln_worker::cache::{self, CacheError, CacheStore};

/// The blob store as a cache store.
#[derive(Debug)]
pub struct Direct {
    store: BlobStore,
    tmp: tempfile::TempDir,
}

impl Direct {
    /// A store on `backend` under `prefix` (unencrypted, zstd level 3), with its temporary files
    /// in a new directory under `scratch`.
    pub fn open(backend: Backend, prefix: &str, scratch: &Path) -> Direct {
        let store = BlobStore::open(&StoreConfig {
            backend,
            prefix: prefix.to_string(),
            key: None,
            level: 3,
        })
        .expect("the blob store");
        Direct {
            store,
            tmp: tempfile::tempdir_in(scratch).expect("a temporary directory"),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CacheError {
    CacheError::Store(e.to_string())
}

#[tonic::async_trait]
impl CacheStore for Direct {
    async fn lookup(
        &self,
        _: &[String],
        _: &str,
        _: &[String],
        _: bool,
    ) -> Result<Option<CacheEntry>, CacheError> {
        Ok(None)
    }

    async fn present(&self, digests: &[String]) -> Result<Vec<bool>, CacheError> {
        let parsed: Vec<Digest> = digests
            .iter()
            .map(|d| Digest::parse(d).map_err(failed))
            .collect::<Result<_, _>>()?;
        self.store.contains(&parsed).await.map_err(failed)
    }

    /// As the coordinator's UploadBlob: the segment is hashed as it is written to a temporary
    /// file, which the store then takes under that digest.
    async fn upload(&self, segment: Bytes) -> Result<String, CacheError> {
        let file = tempfile::NamedTempFile::new_in(self.tmp.path())?;
        let (segment, digest) = tokio::task::spawn_blocking(move || {
            let digest = cache::digest_of(&segment);
            (segment, digest)
        })
        .await
        .map_err(failed)?;
        let digest = Digest::parse(&digest).map_err(failed)?;
        tokio::fs::write(file.path(), &segment).await?;
        let put = self
            .store
            .put_hashed(file.path(), digest, segment.len() as u64)
            .await
            .map_err(failed)?;
        Ok(put.digest.to_string())
    }

    /// As the coordinator's FetchSource: the blob streamed as it is decoded.
    async fn fetch(&self, digest: &str) -> Result<Bytes, CacheError> {
        let digest = Digest::parse(digest).map_err(failed)?;
        let mut chunks = self.store.get_stream(&digest, 0).await.map_err(failed)?;
        let mut data = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            data.extend_from_slice(&chunk.map_err(failed)?);
        }
        Ok(Bytes::from(data))
    }

    async fn save(&self, _: CacheEntry) -> Result<bool, CacheError> {
        Ok(true)
    }
}
