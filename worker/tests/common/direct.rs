//! A cache store straight over a blob store, as the coordinator uses it (for the cache tests and
//! the cache benchmark): segments going in are hashed and stored from memory; segments coming out
//! stream as they are decoded. The index is not kept: lookups find nothing, saves succeed.

use bytes::Bytes;

use kiln_cache::{Backend, BlobStore, Digest, StoreConfig};
use kiln_proto::v1::CacheEntry;
use kiln_worker::cache::{CacheError, CacheStore};

/// The blob store as a cache store.
#[derive(Debug)]
pub struct Direct {
    store: BlobStore,
}

impl Direct {
    /// A store on `backend` under `prefix` (unencrypted, zstd level 3).
    pub fn open(backend: Backend, prefix: &str) -> Direct {
        let store = BlobStore::open(&StoreConfig {
            backend,
            prefix: prefix.to_string(),
            key: None,
            level: 3,
        })
        .expect("the blob store");
        Direct { store }
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

    /// As the coordinator's UploadBlob: the segment is hashed and stored from memory.
    async fn upload(&self, segment: Bytes) -> Result<String, CacheError> {
        let put = self.store.put_bytes(segment).await.map_err(failed)?;
        Ok(put.digest.to_string())
    }

    /// As the coordinator's FetchSource: the blob in the pieces it is decoded in, checked.
    async fn fetch(&self, digest: &str) -> Result<Vec<Bytes>, CacheError> {
        let digest = Digest::parse(digest).map_err(failed)?;
        let mut chunks = self.store.get_stream(&digest, 0).await.map_err(failed)?;
        let mut pieces = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            pieces.push(chunk.map_err(failed)?);
        }
        Ok(pieces)
    }

    async fn save(&self, _: CacheEntry) -> Result<bool, CacheError> {
        Ok(true)
    }
}
