//! `StateStore`: where the coordinator keeps builds, the queue, projects, idempotency tokens and
//! logs, with two backends behind one trait and one shared test suite (`tests/store.rs`):
//! [`EmbeddedStore`] (a single-node durable file; the default) and [`RedisStore`] (several
//! coordinators share one Redis). [`AnyStore`] picks one from a URL.
//!
//! Every change to a build is a compare-and-set on its `version` together with the queue change
//! it implies ([`QueueChange`]), applied atomically: a Lua script on Redis, one lock plus one
//! journal record in the embedded store. Two coordinators racing to claim the same build, or a
//! lease sweeper racing a worker's completion, therefore never both win.
//!
//! The rules both backends share live here as pure functions: the queue rank (`queue_rank`),
//! what the store fills in on a new build (`stamp_new`), filter matching and `list_builds`
//! paging (`page_builds`), where a cache entry sits in its project's index (`cache_slot`).

use std::future::Future;
use std::path::PathBuf;

use kiln_proto::v1::{CacheEntry, Project, StoredBuild};
use sha2::{Digest, Sha256};
use thiserror::Error;

mod embedded;
mod redis;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
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

/// Where a cache entry sits among its project's: `<paths>/<key>`, the paths as the first 16 hex
/// digits of their sha256 (entries with other paths are other caches, semantics §6).
pub fn cache_slot(entry: &CacheEntry) -> String {
    let mut hasher = Sha256::new();
    for path in &entry.paths {
        hasher.update(path.as_bytes());
        hasher.update([0]);
    }
    let scope = format!("{:x}", hasher.finalize());
    format!("{}/{}", &scope[..16], entry.key)
}

/// Bits of a queue rank that hold the `queue_seq`: 2^40 builds before two could collide, and with
/// 101 priority levels above them a rank stays below 2^47, exact in the `f64` of a Redis score.
const QUEUE_SEQ_BITS: u32 = 40;

/// A queued build's place in dispatch order, lowest first: higher priority (clamped to 0..=100)
/// first, then lower `queue_seq` (first in, first out). Redis uses it as the sorted-set score.
fn queue_rank(priority: i32, queue_seq: u64) -> u64 {
    let urgency = 100 - u64::from(priority.clamp(0, 100).unsigned_abs());
    (urgency << QUEUE_SEQ_BITS) | (queue_seq & ((1 << QUEUE_SEQ_BITS) - 1))
}

/// Fills in what the store assigns to a new build: its number (in the record clients see and in
/// the assignment workers get), its place in the queue and its first version.
fn stamp_new(stored: &mut StoredBuild, number: u64, queue_seq: u64) {
    stored.version = 1;
    stored.queue_seq = queue_seq;
    stored.build.get_or_insert_default().build_number = number;
    if let Some(spec) = &mut stored.spec {
        spec.build_number = number;
    }
}

/// Decodes a stored row (a build or a project).
fn decode_row<M: prost::Message + Default>(bytes: &[u8]) -> StoreResult<M> {
    M::decode(bytes).map_err(|err| StoreError::Corrupt(format!("undecodable row: {err}")))
}

/// Decodes a row that may be absent.
fn decode_found<M: prost::Message + Default>(
    row: Option<impl AsRef<[u8]>>,
) -> StoreResult<Option<M>> {
    row.map(|row| decode_row(row.as_ref())).transpose()
}

/// Decodes rows that may be absent, keeping their order.
fn decode_each<M: prost::Message + Default>(
    rows: impl IntoIterator<Item = Option<impl AsRef<[u8]>>>,
) -> StoreResult<Vec<Option<M>>> {
    rows.into_iter().map(decode_found).collect()
}

/// The id and project of a build row (empty when the row has no `build`).
fn id_and_project(stored: &StoredBuild) -> (&str, &str) {
    stored
        .build
        .as_ref()
        .map_or(("", ""), |b| (&b.id, &b.project_name))
}

/// `list_builds` for both backends. Each keeps an index of builds by `queue_seq` (which is also
/// creation order); `fetch(before, n)` returns up to `n` entries of it below `before` (all when
/// `None`), newest first, with the row (`None` if it vanished). Reads in batches until `limit`
/// builds match or the index ends, so a page never repeats or skips a build even while new ones
/// are created: the cursor is a position in the index, not an offset.
async fn page_builds<F, Fut>(
    filter: &BuildFilter,
    mut before: Option<u64>,
    limit: usize,
    mut fetch: F,
) -> StoreResult<Vec<StoredBuild>>
where
    F: FnMut(Option<u64>, usize) -> Fut,
    Fut: Future<Output = StoreResult<Vec<(u64, Option<StoredBuild>)>>>,
{
    let batch = if filter.by_index_only() {
        limit
    } else {
        limit.max(64)
    };
    let mut page = Vec::new();
    while page.len() < limit {
        let rows = fetch(before, batch).await?;
        let exhausted = rows.len() < batch;
        for (seq, row) in rows {
            before = Some(seq);
            if let Some(row) = row.filter(|row| filter.matches(row)) {
                page.push(row);
                if page.len() == limit {
                    break;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(page)
}

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
    /// Neither changes. (A queued build's rank and deadline follow its row, so a `Keep` that
    /// changes `priority` or `queued_deadline_ms` of a queued build moves it.)
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
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per update and matched at once; a box would cost an allocation"
)]
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

/// Filters for [`StateStore::list_builds`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    /// Builds of this project.
    pub project: Option<String>,
    /// Builds whose `build_status` is this.
    pub status: Option<String>,
    /// Builds queued at or after this (`queued_time_ms`).
    pub from_ms: Option<i64>,
    /// Builds queued before this (`queued_time_ms`).
    pub to_ms: Option<i64>,
}

impl BuildFilter {
    fn matches(&self, stored: &StoredBuild) -> bool {
        let Some(build) = &stored.build else {
            return false;
        };
        self.project
            .as_ref()
            .is_none_or(|p| *p == build.project_name)
            && self
                .status
                .as_ref()
                .is_none_or(|s| *s == build.build_status)
            && self.from_ms.is_none_or(|from| build.queued_time_ms >= from)
            && self.to_ms.is_none_or(|to| build.queued_time_ms < to)
    }

    /// Whether a build's place in the (project's) index is enough to know it matches.
    fn by_index_only(&self) -> bool {
        self.status.is_none() && self.from_ms.is_none() && self.to_ms.is_none()
    }
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
    /// returns the earlier build; likewise when a build with the same id is already stored.
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
    /// returns whether it existed before. (So with `create_only` the answer is whether it was
    /// stored; without, whether an earlier project of that name was replaced.)
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

    /// Stores a cache entry at its project's [`cache_slot`]; with `immutable`, stores nothing when
    /// the slot is taken. Returns whether it stored.
    fn put_cache(
        &self,
        entry: CacheEntry,
        immutable: bool,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Every cache entry of a project, in no particular order.
    fn caches(&self, project: &str) -> impl Future<Output = StoreResult<Vec<CacheEntry>>> + Send;

    /// Marks the entry at a project's `slot` as restored at `used_ms` (its `last_used_ms`), if
    /// there is one: an entry removed meanwhile stays removed, one saved meanwhile stays as saved.
    fn touch_cache(
        &self,
        project: &str,
        slot: &str,
        used_ms: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The projects that have (or had) cache entries.
    fn cache_projects(&self) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Removes these entries of a project, each only while its slot still holds the same save
    /// (same `created_ms` and build): one saved again meanwhile stays. Returns how many went.
    fn delete_caches(
        &self,
        project: &str,
        entries: &[CacheEntry],
    ) -> impl Future<Output = StoreResult<u64>> + Send;
}

/// The configured backend: `redis://` or `rediss://` URLs open a [`RedisStore`], anything else
/// (a directory, optionally written `file:DIR`) an [`EmbeddedStore`].
pub enum AnyStore {
    Embedded(EmbeddedStore),
    Redis(RedisStore),
}

impl AnyStore {
    /// Opens the backend `url` names. `prefix` starts every Redis key (so several Kiln
    /// installations or test runs can share one Redis); the embedded store owns its directory and
    /// ignores it.
    pub async fn open(url: &str, prefix: &str) -> StoreResult<AnyStore> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(AnyStore::Redis(RedisStore::connect(url, prefix).await?));
        }
        let dir = PathBuf::from(url.strip_prefix("file:").unwrap_or(url));
        // Opening replays and compacts the journal: file I/O, off the async workers.
        let open = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir));
        let store = open.await.map_err(std::io::Error::other)??;
        Ok(AnyStore::Embedded(store))
    }
}

/// Runs `$call` on whichever backend `$store` holds, bound to `$backend`.
macro_rules! delegate {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            AnyStore::Embedded($backend) => $call.await,
            AnyStore::Redis($backend) => $call.await,
        }
    };
}

impl StateStore for AnyStore {
    async fn create_build(
        &self,
        build: StoredBuild,
        idempotency_token: Option<String>,
    ) -> StoreResult<Created> {
        delegate!(self, s => s.create_build(build, idempotency_token))
    }

    async fn get_build(&self, id: &str) -> StoreResult<Option<StoredBuild>> {
        delegate!(self, s => s.get_build(id))
    }

    async fn get_builds(&self, ids: &[String]) -> StoreResult<Vec<Option<StoredBuild>>> {
        delegate!(self, s => s.get_builds(ids))
    }

    async fn list_builds(
        &self,
        filter: &BuildFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<StoredBuild>> {
        delegate!(self, s => s.list_builds(filter, after, limit))
    }

    async fn update_build(&self, build: StoredBuild, change: QueueChange) -> StoreResult<Updated> {
        delegate!(self, s => s.update_build(build, change))
    }

    async fn queue_head(&self, limit: usize) -> StoreResult<Vec<String>> {
        delegate!(self, s => s.queue_head(limit))
    }

    async fn queue_len(&self) -> StoreResult<u64> {
        delegate!(self, s => s.queue_len())
    }

    async fn queue_expired(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<String>> {
        delegate!(self, s => s.queue_expired(now_ms, limit))
    }

    async fn active_builds(&self) -> StoreResult<Vec<String>> {
        delegate!(self, s => s.active_builds())
    }

    async fn put_project(&self, project: Project, create_only: bool) -> StoreResult<bool> {
        delegate!(self, s => s.put_project(project, create_only))
    }

    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>> {
        delegate!(self, s => s.get_project(name))
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        delegate!(self, s => s.list_projects())
    }

    async fn delete_project(&self, name: &str) -> StoreResult<bool> {
        delegate!(self, s => s.delete_project(name))
    }

    async fn append_log(&self, build_id: &str, seq: u64, data: &[u8]) -> StoreResult<u64> {
        delegate!(self, s => s.append_log(build_id, seq, data))
    }

    async fn read_log(
        &self,
        build_id: &str,
        from_seq: u64,
        max_chunks: usize,
    ) -> StoreResult<Vec<StoredChunk>> {
        delegate!(self, s => s.read_log(build_id, from_seq, max_chunks))
    }

    async fn log_len(&self, build_id: &str) -> StoreResult<u64> {
        delegate!(self, s => s.log_len(build_id))
    }

    async fn put_cache(&self, entry: CacheEntry, immutable: bool) -> StoreResult<bool> {
        delegate!(self, s => s.put_cache(entry, immutable))
    }

    async fn caches(&self, project: &str) -> StoreResult<Vec<CacheEntry>> {
        delegate!(self, s => s.caches(project))
    }

    async fn cache_projects(&self) -> StoreResult<Vec<String>> {
        delegate!(self, s => s.cache_projects())
    }

    async fn touch_cache(&self, project: &str, slot: &str, used_ms: i64) -> StoreResult<()> {
        delegate!(self, s => s.touch_cache(project, slot, used_ms))
    }

    async fn delete_caches(&self, project: &str, entries: &[CacheEntry]) -> StoreResult<u64> {
        delegate!(self, s => s.delete_caches(project, entries))
    }
}

#[cfg(test)]
mod tests {
    use kiln_proto::v1::Build;

    use super::*;

    #[test]
    fn queue_rank_orders_by_priority_then_seq() {
        assert!(queue_rank(100, 9) < queue_rank(99, 1));
        assert!(queue_rank(5, 1) < queue_rank(5, 2));
        assert_eq!(queue_rank(500, 3), queue_rank(100, 3));
        assert_eq!(queue_rank(-4, 3), queue_rank(0, 3));
        // Exact as an f64 (a Redis score) at the extremes.
        let worst = queue_rank(0, (1 << QUEUE_SEQ_BITS) - 1);
        assert!(worst < 1 << 53);
    }

    #[test]
    fn filter_matches_project_status_and_half_open_time_range() {
        let row = StoredBuild {
            build: Some(Build {
                project_name: "web".into(),
                build_status: "SUCCEEDED".into(),
                queued_time_ms: 1_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let filter = |project: Option<&str>, status: Option<&str>, from, to| BuildFilter {
            project: project.map(Into::into),
            status: status.map(Into::into),
            from_ms: from,
            to_ms: to,
        };
        assert!(filter(None, None, None, None).matches(&row));
        assert!(filter(Some("web"), Some("SUCCEEDED"), Some(1_000), Some(1_001)).matches(&row));
        assert!(!filter(Some("api"), None, None, None).matches(&row));
        assert!(!filter(None, Some("FAILED"), None, None).matches(&row));
        assert!(!filter(None, None, Some(1_001), None).matches(&row));
        assert!(!filter(None, None, None, Some(1_000)).matches(&row));
        assert!(!filter(None, None, None, None).matches(&StoredBuild::default()));
    }
}
