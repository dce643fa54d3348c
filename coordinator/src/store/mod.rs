//! `StateStore`: where the coordinator keeps builds, the queue, projects, idempotency tokens and
//! logs, with two backends behind one trait and one shared test suite (`tests/store.rs`):
//! [`EmbeddedStore`] (a single-node durable file; the default) and [`RedisStore`] (several
//! coordinators share one Redis).
//!
//! Every change to a build is a compare-and-set on its `version` together with the queue change
//! it implies ([`QueueChange`]), applied atomically: a Lua script on Redis, one lock plus one
//! journal record in the embedded store. Two coordinators racing to claim the same build, or a
//! lease sweeper racing a worker's completion, therefore never both win.

use std::future::Future;

use kiln_proto::v1::{Project, StoredBuild};
use thiserror::Error;

mod embedded;
mod redis;

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis: {0}")]
    Redis(String),
    #[error("state store holds a record it cannot read ({0}); was it written by a newer Kiln?")]
    Corrupt(String),
    #[error("log chunk {got} of build {build} arrived before chunk {expected}")]
    LogGap {
        build: String,
        expected: u64,
        got: u64,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What [`StateStore::create_build`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new build, numbered and queued.
    New(StoredBuild),
    /// The idempotency token was seen before: the build that call created.
    Existing(StoredBuild),
}

/// How a build's place in the queue and in its project's running set changes with an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChange {
    /// Neither changes.
    Keep,
    /// Into the queue (at its priority and original `queue_seq`), out of the running set.
    Enqueue,
    /// Out of the queue, into the active set and the project's running set; refused with
    /// [`Updated::LimitReached`] when the project already runs `limit` builds (0 = no limit).
    Claim { limit: u32 },
    /// Out of the queue, the active set and the project's running set (the build ended).
    Finish,
}

/// The result of [`StateStore::update_build`].
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// Written; the row as stored (version bumped).
    Done(StoredBuild),
    /// The stored version was not the expected one (someone else wrote first): re-read, retry.
    Conflict,
    /// `Claim` refused: the project's concurrent build limit is reached.
    LimitReached,
    /// No such build.
    Missing,
}

/// Filters for [`StateStore::list_builds`].
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub project: Option<String>,
    pub status: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// One stored log chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub seq: u64,
    /// Byte offset of `data` in the whole log.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The coordinator's durable state. All methods are safe to call concurrently, from several
/// coordinators when the backend is shared.
pub trait StateStore: Send + Sync + 'static {
    /// Numbers the build (per project, from 1, never repeating), gives it a `queue_seq`, stores it
    /// with version 1 and queues it, all at once. With a token seen before, stores nothing and
    /// returns the earlier build.
    fn create_build(
        &self,
        build: StoredBuild,
        idempotency_token: Option<String>,
    ) -> impl Future<Output = StoreResult<Created>> + Send;

    fn get_build(&self, id: &str) -> impl Future<Output = StoreResult<Option<StoredBuild>>> + Send;

    fn get_builds(
        &self,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<Option<StoredBuild>>>> + Send;

    /// Builds newest first (by creation), at most `limit`, starting after the build `after` (a
    /// paging cursor: the id of the last build of the previous page).
    fn list_builds(
        &self,
        filter: &BuildFilter,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<StoredBuild>>> + Send;

    /// Writes `build` if the stored version equals `build.version`, storing it with version + 1,
    /// and applies `change`, all or nothing.
    fn update_build(
        &self,
        build: StoredBuild,
        change: QueueChange,
    ) -> impl Future<Output = StoreResult<Updated>> + Send;

    /// Up to `limit` queued build ids in dispatch order: higher priority first, then `queue_seq`.
    fn queue_head(&self, limit: usize) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    fn queue_len(&self) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Queued builds whose `queued_deadline_ms` is at or before `now_ms`.
    fn queue_expired(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Ids of claimed, not yet finished builds (the ones holding or waiting for leases).
    fn active_builds(&self) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Stores a project; with `create_only`, returns false (storing nothing) if it exists, else
    /// returns whether it existed before.
    fn put_project(
        &self,
        project: Project,
        create_only: bool,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    fn get_project(&self, name: &str) -> impl Future<Output = StoreResult<Option<Project>>> + Send;

    /// Every project, by name.
    fn list_projects(&self) -> impl Future<Output = StoreResult<Vec<Project>>> + Send;

    /// Returns whether it existed.
    fn delete_project(&self, name: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Appends chunk `seq` of a build's log. `seq` below the next expected one is a duplicate
    /// (ignored), above it is [`StoreError::LogGap`]. Returns the next expected seq.
    fn append_log(
        &self,
        build_id: &str,
        seq: u64,
        data: &[u8],
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Up to `max_chunks` chunks from `from_seq` on.
    fn read_log(
        &self,
        build_id: &str,
        from_seq: u64,
        max_chunks: usize,
    ) -> impl Future<Output = StoreResult<Vec<StoredChunk>>> + Send;

    /// The number of chunks stored for a build.
    fn log_len(&self, build_id: &str) -> impl Future<Output = StoreResult<u64>> + Send;
}
