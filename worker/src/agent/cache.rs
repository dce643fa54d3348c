//! The build cache of an assigned build, kept by the coordinator: entries in its state store,
//! segments in its blob store. Every entry call carries the build's lease, so the coordinator
//! picks the project and a worker that lost the build cannot save for it.

use std::time::Duration;

use bytes::Bytes;
use kiln_proto::v1::{
    CacheEntry, DataChunk, FetchSourceRequest, HasBlobsRequest, LeaseRef, LookupCacheRequest,
    SaveCacheRequest,
};

use super::Client;
use crate::cache::{CacheError, CacheStore, MAX_SEGMENT};

#[derive(Debug)]
pub struct CoordinatorCache {
    pub client: Client,
    pub lease: LeaseRef,
}

/// How long one cache call may take: a store that hangs must not eat the build's time. A
/// segment is at most 16 MiB.
const CALL: Duration = Duration::from_secs(60);
const SEGMENT: Duration = Duration::from_secs(600);

/// Bytes per `data` message of a segment going up.
const CHUNK: usize = 256 * 1024;

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn store_error(status: tonic::Status) -> CacheError {
    CacheError::Store(format!(
        "the coordinator answered {:?}: {}",
        status.code(),
        status.message()
    ))
}

#[tonic::async_trait]
impl CacheStore for CoordinatorCache {
    async fn lookup(
        &self,
        paths: &[String],
        key: &str,
        prefixes: &[String],
        restore: bool,
    ) -> Result<Option<CacheEntry>, CacheError> {
        let request = LookupCacheRequest {
            lease: Some(self.lease.clone()),
            paths: paths.to_vec(),
            key: key.to_string(),
            prefixes: prefixes.to_vec(),
            restore,
        };
        match self.client.clone().lookup_cache(timed(request, CALL)).await {
            Ok(entry) => Ok(Some(entry.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(store_error(status)),
        }
    }

    async fn present(&self, digests: &[String]) -> Result<Vec<bool>, CacheError> {
        let request = HasBlobsRequest {
            digests: digests.to_vec(),
        };
        let response = self.client.clone().has_blobs(timed(request, CALL)).await;
        Ok(response.map_err(store_error)?.into_inner().present)
    }

    async fn upload(&self, segment: Bytes) -> Result<String, CacheError> {
        // Slices of the segment's buffer, not copies.
        let chunks: Vec<DataChunk> = (0..segment.len())
            .step_by(CHUNK)
            .map(|at| DataChunk {
                data: segment.slice(at..(at + CHUNK).min(segment.len())),
            })
            .collect();
        let response = self
            .client
            .clone()
            .upload_blob(timed(futures_util::stream::iter(chunks), SEGMENT))
            .await;
        Ok(response.map_err(store_error)?.into_inner().digest)
    }

    async fn fetch(&self, digest: &str) -> Result<Vec<Bytes>, CacheError> {
        let request = FetchSourceRequest {
            digest: digest.to_string(),
        };
        let mut stream = self
            .client
            .clone()
            .fetch_source(timed(request, SEGMENT))
            .await
            .map_err(store_error)?
            .into_inner();
        let (mut pieces, mut size) = (Vec::new(), 0);
        while let Some(chunk) = stream.message().await.map_err(store_error)? {
            size += chunk.data.len();
            if size > MAX_SEGMENT {
                return Err(CacheError::Store(format!(
                    "cache segment {digest} is larger than a segment can be"
                )));
            }
            pieces.push(chunk.data);
        }
        Ok(pieces)
    }

    async fn save(&self, entry: CacheEntry) -> Result<bool, CacheError> {
        let request = SaveCacheRequest {
            lease: Some(self.lease.clone()),
            entry: Some(entry),
        };
        let response = self.client.clone().save_cache(timed(request, CALL)).await;
        Ok(response.map_err(store_error)?.into_inner().stored)
    }
}
